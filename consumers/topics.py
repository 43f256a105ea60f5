"""Topic checks and creation: the co-partitioning contract, checked before consuming.

The pipeline keeps a user's clicks and purchases in one process only if both input topics
have the same number of partitions and both are keyed by user id. The partition count is
checked here at start-up; the key is checked per message by the decoder.
"""

from __future__ import annotations

import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream.errors import BrokerError, TopicLayoutError
from stream.settings import Settings


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(dict(settings.kafka_client_config()))


def partition_counts(admin: AdminClient, bootstrap: str, timeout: float = 10.0) -> dict[str, int]:
    """Every topic's partition count; a readable :class:`BrokerError` if there is no broker."""
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise BrokerError(
            f"cannot reach the Kafka broker at {bootstrap} ({exc.args[0].str()}). Start it "
            "(locally: make up) or point SEGMENTER_KAFKA_BOOTSTRAP at a running broker."
        ) from None
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def check_input_topics(counts: dict[str, int], settings: Settings) -> int:
    """Return the shared partition count of the input topics, or refuse to start."""
    missing = [t for t in (settings.clicks_topic, settings.purchases_topic) if t not in counts]
    if missing:
        raise TopicLayoutError(
            f"input topic(s) {', '.join(missing)} do not exist; create them with the same "
            "partition count (make up creates them locally)"
        )
    clicks, purchases = counts[settings.clicks_topic], counts[settings.purchases_topic]
    if clicks != purchases:
        raise TopicLayoutError(
            f"{settings.clicks_topic} has {clicks} partitions but {settings.purchases_topic} has "
            f"{purchases}: the input topics must be co-partitioned (same count, keyed by user "
            "id) so that one process sees all of a user's events"
        )
    return clicks


def create_topics(
    admin: AdminClient, specs: dict[str, tuple[int, dict[str, str]]], timeout: float = 30.0
) -> list[str]:
    """Create the missing topics of ``specs`` (name -> (partitions, config)); return them."""
    if not specs:
        return []
    new = [NewTopic(name, p, 1, config=cfg) for name, (p, cfg) in specs.items()]
    created = []
    for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise BrokerError(f"could not create topic {name}: {exc.args[0].str()}") from None
    # A created topic reaches the metadata a moment later; return once all of them have.
    deadline = time.monotonic() + timeout
    while not set(specs) <= set(partition_counts(admin, "the broker", timeout)):
        if time.monotonic() > deadline:
            raise BrokerError(f"topics {', '.join(specs)} were created but never appeared")
        time.sleep(0.1)
    return created


def ensure_output_topics(
    admin: AdminClient, counts: dict[str, int], settings: Settings, partitions: int
) -> list[str]:
    """Create the output topics that do not exist yet (when the settings allow it)."""
    wanted: dict[str, tuple[int, dict[str, str]]] = {
        settings.changes_topic: (partitions, {}),
        # Compacted: the latest segment per user, for readers that bootstrap a view.
        settings.current_topic: (partitions, {"cleanup.policy": "compact"}),
        settings.deadletter_topic: (partitions, {}),
        # No records are ever written here: only the group's committed offsets matter.
        settings.marks_topic: (partitions, {}),
    }
    missing = {k: v for k, v in wanted.items() if k not in counts}
    if missing and not settings.create_output_topics:
        raise TopicLayoutError(
            f"output topic(s) {', '.join(missing)} do not exist and "
            "SEGMENTER_CREATE_OUTPUT_TOPICS is false; create them first"
        )
    return create_topics(admin, missing)
