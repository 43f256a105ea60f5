"""Every Prometheus metric of the segmenter, built against an injected registry.

Names follow Prometheus conventions: base units (seconds), ``_total`` only on counters,
and no user ids in labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The segmenter's metrics; one instance per process, on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.events = Counter(
            "segmenter_events_total",
            "Input messages by topic, event type and outcome "
            "(processed, duplicate, replayed, late, dead_letter).",
            ["topic", "type", "outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "segmenter_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=registry,
        )
        self.batch_duration = Histogram(
            "segmenter_batch_duration_seconds",
            "Time to process one micro-batch, from poll return to offsets committed.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "segmenter_batch_messages",
            "Messages per micro-batch.",
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000),
            registry=registry,
        )
        self.end_to_end = Histogram(
            "segmenter_end_to_end_latency_seconds",
            "Time from the input message's Kafka timestamp to its effects being durable "
            "(sampled: up to 100 messages per batch).",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "segmenter_consumer_lag",
            "Messages between this process's position (committed once its batch is) and the "
            "last stable offset of each assigned partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.segment_changes = Counter(
            "segmenter_segment_changes_total",
            "Segment changes published (a new user's first segment included).",
            registry=registry,
        )
        self.users_updated = Counter(
            "segmenter_users_updated_total",
            "User states written to Redis.",
            registry=registry,
        )
        self.segment_users = Gauge(
            "segmenter_segment_users",
            "Users currently in each segment.",
            ["segment", "name"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "segmenter_redis_errors_total",
            "Failed Redis operations (each retried).",
            registry=registry,
        )
        self.produce_errors = Counter(
            "segmenter_produce_errors_total",
            "Messages the producer failed to deliver.",
            ["topic"],
            registry=registry,
        )
        self.batch_failures = Counter(
            "segmenter_batch_failures_total",
            "Batches aborted and replayed (Redis or broker unavailable, delivery refused).",
            registry=registry,
        )
        self.state_gaps = Counter(
            "segmenter_state_gaps_total",
            "Input partitions found with writes Redis no longer holds, by kind (behind: "
            "last writes lost; replaced: another key space; empty: no key space).",
            ["kind"],
            registry=registry,
        )
        self.replayed_events = Counter(
            "segmenter_replayed_events_total",
            "Input events read again to rebuild what Redis lost (nothing published).",
            registry=registry,
        )
        self.lost_offsets = Counter(
            "segmenter_lost_offsets_total",
            "Input offsets Redis lost that Kafka no longer retains.",
            registry=registry,
        )
        self.incomplete_users = Counter(
            "segmenter_incomplete_users_total",
            "User states rebuilt without events Redis lost and Kafka no longer retained "
            "(SEGMENTER_ON_LOST_HISTORY=continue); marked state_incomplete.",
            registry=registry,
        )
        self.rebuilding = Gauge(
            "segmenter_rebuilding_partitions",
            "Input partitions being rebuilt from Kafka (not ready while above 0).",
            registry=registry,
        )
        self.fenced_writes = Counter(
            "segmenter_fenced_writes_total",
            "User writes refused because Redis held newer state (after a rebalance).",
            registry=registry,
        )
        self.republished_changes = Counter(
            "segmenter_republished_changes_total",
            "Segment changes published again because their commit was in doubt.",
            registry=registry,
        )
        self.model_version = Gauge(
            "segmenter_model_version", "Version of the model in use.", registry=registry
        )
        self.model_ready = Gauge(
            "segmenter_model_ready",
            "1 once the model has been seeded and assigns segments.",
            registry=registry,
        )
        self.segment_moves = Counter(
            "segmenter_segment_moves_total",
            "Segment changes of users who already had a segment (flaps are among these).",
            registry=registry,
        )
        self.model_epoch = Gauge(
            "segmenter_model_epoch",
            "Structural generation of the model (seeding, re-seed, refit, rollback).",
            registry=registry,
        )
        self.model_segments = Gauge(
            "segmenter_model_segments", "Segments (k) in the model in use.", registry=registry
        )
        self.model_updates = Counter(
            "segmenter_model_updates_total",
            "User updates (one per user per batch) the model learned from, or left out by "
            "the learning budget (SEGMENTER_LEARN_BUDGET).",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("learned", "sampled_out"):
            self.model_updates.labels(outcome)
        self.resweeps = Counter(
            "segmenter_resweeps_total",
            "Times every user of this process was made due for a new look, by cause: the "
            "segments changed, or their centres moved SEGMENTER_RESWEEP_DRIFT since.",
            ["cause"],
            registry=registry,
        )
        for cause in ("segments_changed", "centres_moved"):
            self.resweeps.labels(cause)
        self.model_syncs = Counter(
            "segmenter_model_syncs_total",
            "Merges of this process's learning into the shared model, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.model_sync_drift = Gauge(
            "segmenter_model_sync_drift",
            "Largest distance (standardised units) a centre moved in the last sync.",
            registry=registry,
        )
        self.lineage_events = Counter(
            "segmenter_segment_lineage_events_total",
            "Segments born, retired, merged, split or restored.",
            ["event"],
            registry=registry,
        )
        self.silhouette = Gauge(
            "segmenter_model_silhouette",
            "Silhouette of the current segments on the model's user sample as of the "
            "watermark (-1..1, higher is better separated).",
            registry=registry,
        )
        self.size_entropy = Gauge(
            "segmenter_segment_size_entropy",
            "Normalised entropy of segment sizes (1 = equal sizes, 0 = one segment).",
            registry=registry,
        )
        self.flap_ratio = Gauge(
            "segmenter_segment_flap_ratio",
            "Moves per user update since the last catalogue refresh.",
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "segmenter_assigned_partitions",
            "Input partitions this process owns.",
            registry=registry,
        )
        self.watermark = Gauge(
            "segmenter_event_time_watermark_seconds",
            "The consumer group's event-time watermark (Unix time): every feature is taken "
            "as of it.",
            registry=registry,
        )
        self.timers_due = Gauge(
            "segmenter_timers_due",
            "Users of this process's partitions whose event-time timer the watermark passed "
            "and who still wait to be re-decided (the sweep's backlog).",
            registry=registry,
        )
        self.swept_users = Counter(
            "segmenter_swept_users_total",
            "Users re-decided because time alone passed a threshold of theirs.",
            registry=registry,
        )
        self.refits = Counter(
            "segmenter_model_refits_total",
            "Automatic refits on the user sample, by outcome (kept, not_kept).",
            ["outcome"],
            registry=registry,
        )
        self.last_batch_time = Gauge(
            "segmenter_last_batch_timestamp_seconds",
            "Unix time the last batch was committed.",
            registry=registry,
        )
