"""The CLI's errors as a user sees them: one readable line, the right exit code."""

from __future__ import annotations

import os
import subprocess
import sys

from loadtest.devstack.servers import free_port


def segmenter(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SEGMENTER_")}
    return subprocess.run(
        [sys.executable, "-m", "consumers.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=60,
        check=False,
    )


def test_bad_setting_names_the_variable() -> None:
    done = segmenter("run", SEGMENTER_N_CLUSTERS="six")
    assert done.returncode == 2
    assert "SEGMENTER_N_CLUSTERS" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_setting_is_refused() -> None:
    done = segmenter("run", SEGMENTER_BATCH_MAX_EVENTZ="10")
    assert done.returncode == 2
    assert "SEGMENTER_BATCH_MAX_EVENTZ" in done.stderr


def test_bad_settings_file_key_is_named(tmp_path) -> None:
    cfg = tmp_path / "segmenter.toml"
    cfg.write_text('redis_url = "http://nope"\n')
    done = segmenter("--config", str(cfg), "run")
    assert done.returncode == 2
    assert "redis_url" in done.stderr


def test_missing_redis_is_a_readable_message() -> None:
    port = free_port()
    done = segmenter("run", SEGMENTER_REDIS_URL=f"redis://127.0.0.1:{port}/0")
    assert done.returncode == 1
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in done.stderr
    assert "Traceback" not in done.stderr


def test_password_is_not_printed() -> None:
    port = free_port()
    done = segmenter("run", SEGMENTER_REDIS_URL=f"redis://app:hunter2@127.0.0.1:{port}/0")
    assert done.returncode == 1
    assert "hunter2" not in done.stderr + done.stdout


def test_help_names_every_command_and_the_exit_codes() -> None:
    r = segmenter("--help")
    assert r.returncode == 0
    for command in ("run", "replay", "segments", "inspect", "explain", "forget", "model"):
        assert command in r.stdout
    # The local stack, the generator and the demo are development tools (loadtest.dev).
    for command in ("devstack", "generate", "demo"):
        assert command not in r.stdout
    text = " ".join(r.stdout.split())
    assert "Exit codes: 0 success; 1 runtime error" in text
    assert "2 bad configuration or usage; 3 not found" in text
