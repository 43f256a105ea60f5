"""The model checkpoint and its history: ``seg:model`` (the current checkpoint, as JSON)
and ``seg:model:versions`` (version -> a kept checkpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson

from state.client import StoreBase, call, run
from stream.checkpoint import Checkpoint
from stream.errors import ModelError

#: Set the model checkpoint (KEYS[1]) to ARGV[2] only if the stored one is after merge
#: ARGV[1] (0: no checkpoint yet). Returns 1 when written, 0 when another write came first.
#: Checkpoints are written with ``merges`` as their first field (:func:`_model_blob`), so
#: the script reads it without decoding the whole document.
MODEL_CAS = """
local cur = redis.call('GET', KEYS[1])
local v = 0
if cur then v = tonumber(string.match(cur, '^{"merges":(%d+),')) end
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""
_CAS_ATTEMPTS = 20


class ModelCheckpoints(StoreBase):
    """The shared model checkpoint, written under a version fence, and its kept versions."""

    def load_model(self) -> Checkpoint | None:
        """The current checkpoint (``seg:model``), or ``None`` before the first one."""
        blob = call(lambda: self._r.get(self.keys.model), "load the model checkpoint")
        return None if blob is None else _decode_model(blob, self.keys.model)

    def commit_model(
        self,
        build: Callable[[Checkpoint | None], tuple[Checkpoint, list[dict[str, Any]]]],
        history_every_ms: int,
        now_ms: int,
        keep: int = 50,
    ) -> tuple[Checkpoint, list[dict[str, Any]]]:
        """Read the checkpoint, ``build`` the next one from it, write it under a version fence.

        The write succeeds only if the stored checkpoint is still the one read (its merge
        count, checked by :data:`MODEL_CAS` inside Redis); otherwise another process
        committed first, and the checkpoint is read and built again. A newly published
        version also goes to the history (``seg:model:versions``, last ``keep`` kept) when
        it changed the segments or when the newest kept one is ``history_every_ms`` old.
        """
        for _ in range(_CAS_ATTEMPTS):
            current = self.load_model()
            expected = 0 if current is None else current.merges
            built, events = build(current)
            last = 0 if current is None else (current.history_at_ms or 0)
            new_version = built.version != (0 if current is None else current.version)
            keep_it = new_version and (bool(events) or now_ms - last >= history_every_ms)
            ckpt = replace(built, saved_at_ms=now_ms, history_at_ms=now_ms if keep_it else last)
            blob = _model_blob(ckpt)
            ok = call(
                lambda blob=blob, expected=expected: self._r.eval(
                    MODEL_CAS, 1, self.keys.model, str(expected), blob
                ),
                "write the model checkpoint",
            )
            if int(ok) == 1:
                if keep_it:
                    self._keep_version(ckpt.version, blob, keep)
                return ckpt, events
        raise ModelError(
            f"the model checkpoint changed under {_CAS_ATTEMPTS} merges in a row; "
            "too many processes sync at once (raise SEGMENTER_MODEL_SYNC_INTERVAL_S)"
        )

    def _keep_version(self, version: int, blob: bytes, keep: int) -> None:
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(self.keys.model_versions, str(version), blob)
        pipe.hkeys(self.keys.model_versions)
        versions = sorted(int(v) for v in run(pipe, "keep a model version")[-1])
        if len(versions) > keep:
            old = [str(v) for v in versions[: len(versions) - keep]]
            call(lambda: self._r.hdel(self.keys.model_versions, *old), "trim model versions")

    def model_versions(self) -> list[dict[str, Any]]:
        """Every kept version: version, when saved, updates learned, rolled back from."""
        raw = call(lambda: self._r.hgetall(self.keys.model_versions), "list model versions")
        out = []
        for blob in raw.values():
            d = orjson.loads(blob)
            out.append(
                {
                    "version": d["version"],
                    "epoch": d.get("epoch"),
                    "saved_at_ms": d.get("saved_at_ms"),
                    "updates": d.get("updates"),
                    "ready": d.get("ready"),
                    "segments": d.get("ids"),
                    "rolled_back_from": d.get("rolled_back_from"),
                }
            )
        return sorted(out, key=lambda v: v["version"])

    def model_version(self, version: int) -> Checkpoint:
        """Kept version ``version`` of the checkpoint."""
        blob = call(
            lambda: self._r.hget(self.keys.model_versions, str(version)), "read a model version"
        )
        if blob is None:
            raise ModelError(f"there is no model version {version}; see: segmenter model versions")
        return _decode_model(blob, self.keys.model_versions)


def _model_blob(ckpt: Checkpoint) -> bytes:
    """The checkpoint as JSON, ``merges`` first (the fence script matches it there)."""
    plain = ckpt.to_dict()
    ordered = {"merges": ckpt.merges, **{k: v for k, v in plain.items() if k != "merges"}}
    return orjson.dumps(ordered, option=orjson.OPT_SERIALIZE_NUMPY)


def _decode_model(blob: bytes, key: str) -> Checkpoint:
    try:
        doc = orjson.loads(blob)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise ModelError(f"{key} does not hold a model checkpoint; delete it to start fresh")
    return Checkpoint.from_dict(doc)
