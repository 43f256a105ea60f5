"""The development CLI (``python -m loadtest.dev``): its commands, and that the runtime
package never imports the development side."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def dev(*args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    return subprocess.run(
        [sys.executable, "-m", "loadtest.dev", *args],
        capture_output=True,
        text=True,
        env=clean,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_help_names_the_development_commands() -> None:
    r = dev("--help")
    assert r.returncode == 0, r.stderr
    for command in ("devstack", "generate", "demo"):
        assert command in r.stdout


def test_status_of_a_stack_that_is_not_running() -> None:
    r = dev("devstack", "status", "--dir", str(ROOT / "no-such-dir"))
    # Nothing running there: "not running", exit code 3 (not found).
    assert r.returncode == 3, r.stderr
    assert "not running" in r.stdout


def test_the_runtime_packages_do_not_import_the_development_side() -> None:
    offenders = []
    for package in ("stream", "consumers", "state"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names: list[str] = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                offenders += [
                    f"{path.relative_to(ROOT)}: {n}"
                    for n in names
                    if n.split(".")[0] in ("loadtest", "tests", "examples")
                ]
    assert offenders == []
