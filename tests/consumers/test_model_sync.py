"""When every user is re-decided by the sweep: the segments changed, or their centres moved
far since everyone last was. Pure: the model is adopted from checkpoints built here."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from prometheus_client import generate_latest

from consumers.app import Segmenter
from stream.checkpoint import ModelDelta, ModelParams, merge
from stream.checkpoint_value import Checkpoint
from stream.scaling import MODEL_FEATURES, OnlineScaler
from stream.settings import Settings

D = len(MODEL_FEATURES)


def seeded() -> Checkpoint:
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(c, 0.3, (40, D)) for c in (0.0, 4.0, 8.0)])
    scaler = OnlineScaler.empty(D)
    for x in pts:
        scaler.learn(x)
    delta = ModelDelta(0, 0, None, None, None, 0, scaler, len(pts), pts[:0])
    params = ModelParams(k_min=3, k_max=3, warmup_users=60, reservoir_size=600, seed=1)
    doc, _ = merge(None, delta, pts, params, now_ms=0)
    assert doc.ready and doc.published is not None
    return doc


def moved(doc: Checkpoint, by: float, version: int) -> Checkpoint:
    """The same segments, the first centre moved ``by`` along one axis: a publish."""
    assert doc.published is not None
    centres = [list(r) for r in doc.published.centres]
    centres[0][0] += by
    published = replace(doc.published, centres=tuple(tuple(r) for r in centres))
    return replace(doc, version=version, published=published)


def test_centres_that_moved_far_since_the_last_resweep_bring_everyone_forward() -> None:
    seg = Segmenter(Settings(resweep_drift=0.25))  # connects to nothing until started
    sync = seg.sync
    doc = seeded()
    sync._adopt(doc, [])
    assert not sync.resweep  # the first segments: everyone is decided by them anyway
    sync._adopt(moved(doc, 0.15, doc.version + 1), [])
    assert not sync.resweep  # 0.15 so far
    sync._adopt(moved(doc, 0.30, doc.version + 2), [])
    assert sync.resweep and sync.resweep_cause == "centres moved"  # 0.30 since the start
    sync.resweep = False
    sync._adopt(moved(doc, 0.40, doc.version + 3), [])
    assert not sync.resweep  # 0.10 since the resweep
    sync._adopt(moved(doc, 0.60, doc.version + 4), [])
    assert sync.resweep
    text = generate_latest(seg.metrics.registry).decode()
    assert 'segmenter_resweeps_total{cause="centres_moved"} 2.0' in text
    assert 'segmenter_resweeps_total{cause="segments_changed"} 0.0' in text


def test_a_new_epoch_is_a_resweep_and_a_zero_limit_is_none_for_drift() -> None:
    seg = Segmenter(Settings(resweep_drift=0.0))
    sync = seg.sync
    doc = seeded()
    sync._adopt(doc, [])
    sync._adopt(moved(doc, 5.0, doc.version + 1), [])
    assert not sync.resweep  # drift alone never, with 0
    sync._adopt(replace(moved(doc, 5.0, doc.version + 2), epoch=doc.epoch + 1), [])
    assert sync.resweep and sync.resweep_cause == "segments changed"
