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


def seeded(k: int = 3) -> Checkpoint:
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(c, 0.3, (40, D)) for c in (0.0, 4.0, 8.0, 12.0)[:k]])
    scaler = OnlineScaler.empty(D)
    for x in pts:
        scaler.learn(x)
    delta = ModelDelta(0, 0, None, None, None, 0, scaler, len(pts), pts[:0])
    params = ModelParams(k_min=k, k_max=k, warmup_users=60, reservoir_size=600, seed=1)
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
    # Same epoch: partitions already re-decided under it are to be re-decided again.
    assert sync.resweep_every_partition
    sync.resweep = sync.resweep_every_partition = False
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
    # A new epoch: only partitions not yet re-decided under it are.
    assert not sync.resweep_every_partition


class _Catalogue:
    """Stands in for the store's catalogue calls; counts the quality samples read."""

    def __init__(self, sample: np.ndarray) -> None:
        self.sample = sample
        self.snapshots = 0

    def segment_sizes(self, segments: list[int]) -> list[int]:
        return [10] * len(segments)

    def write_catalogue(self, profiles: object, sizes: object) -> None:
        pass

    def snapshot(self, *args: object, **kwargs: object) -> np.ndarray:
        self.snapshots += 1
        return self.sample


def test_the_silhouette_is_computed_when_the_segments_change_and_then_every_interval() -> None:
    from consumers.model_sync import QUALITY_INTERVAL_S

    seg = Segmenter(Settings())  # connects to nothing until started
    sync = seg.sync
    doc = seeded()
    sync._adopt(doc, [])
    rng = np.random.default_rng(2)
    store = _Catalogue(np.concatenate([rng.normal(c, 0.3, (40, D)) for c in (0.0, 4.0, 8.0)]))
    sync.store = store  # type: ignore[assignment]
    sync.refresh_catalogue()
    assert store.snapshots == 1
    text = generate_latest(seg.metrics.registry).decode()
    (line,) = [x for x in text.splitlines() if x.startswith("segmenter_model_silhouette ")]
    assert 0.5 < float(line.split()[1]) <= 1.0  # three groups far apart
    sync.refresh_catalogue()
    assert store.snapshots == 1  # within the interval, same version: not again
    sync._adopt(moved(doc, 0.1, doc.version + 1), [])
    sync.refresh_catalogue()
    assert store.snapshots == 1  # the centres moved, the segments are the same: not again
    sync._adopt(replace(seeded(k=4), version=doc.version + 2), [])
    sync.refresh_catalogue()
    assert store.snapshots == 2  # other segments: at once
    at, ids = sync._quality_at
    sync._quality_at = (at - QUALITY_INTERVAL_S, ids)  # as if the interval passed
    sync.refresh_catalogue()
    assert store.snapshots == 3
