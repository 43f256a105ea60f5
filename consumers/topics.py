"""Topic checks and creation: the co-partitioning contract, checked before consuming.

The pipeline keeps a user's clicks and purchases in one process only if both input topics
have the same number of partitions and both are keyed by user id. The partition count is
checked here at start-up; the key is checked per message by the decoder.
"""

from __future__ import annotations

import re
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from stream.errors import BrokerError, TopicLayoutError
from stream.settings import Settings


class Admin(AdminClient):
    """An admin client that keeps what librdkafka reported while it could not connect
    (wrong credentials, an untrusted certificate), to say why in one error rather than
    in a stream of librdkafka log lines."""

    def __init__(self, conf: dict[str, str | int | float | bool]) -> None:
        self.errors: list[KafkaError] = []
        # librdkafka logs every failed connection attempt at level 3 (errors), many a
        # second; below that it is quiet, the failures reach ``errors``, and one
        # BrokerError says what to do about them.
        full: dict[str, Any] = {**conf, "error_cb": self.errors.append, "log_level": 2}
        super().__init__(full)


def admin_client(settings: Settings) -> Admin:
    return Admin(dict(settings.kafka_client_config()))


def partition_counts(admin: AdminClient, bootstrap: str, timeout: float = 10.0) -> dict[str, int]:
    """Every topic's partition count; a readable :class:`BrokerError` if there is no broker,
    or it refused the credentials or the certificate."""
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        errors: list[KafkaError] = []
        if isinstance(admin, Admin):
            admin.poll(0.5)  # serves the error callbacks of the attempts
            errors = admin.errors
        raise BrokerError(why_unreachable(bootstrap, exc.args[0], errors)) from None
    return {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}


def why_unreachable(bootstrap: str, failure: KafkaError, errors: list[KafkaError]) -> str:
    """What to tell a user whose client could not talk to the broker at ``bootstrap``:
    refused credentials and untrusted certificates by name, the rest as unreachable.

    >>> why_unreachable("b:9093", KafkaError(KafkaError._TRANSPORT, "Failed to get metadata"),
    ...     [KafkaError(KafkaError._AUTHENTICATION, "sasl_ssl://b:9093/bootstrap: SASL "
    ...      "authentication error: invalid credentials (after 9ms in state AUTH_REQ)")])
    ... # doctest: +ELLIPSIS
    'the Kafka broker at b:9093 refused the SASL credentials (SASL authentication error: ...
    """
    by_code = {e.code(): _detail(e.str()) for e in errors}
    if KafkaError._AUTHENTICATION in by_code:
        return (
            f"the Kafka broker at {bootstrap} refused the SASL credentials "
            f"({by_code[KafkaError._AUTHENTICATION]}). Check SEGMENTER_KAFKA__SASL__USERNAME, "
            "SEGMENTER_KAFKA__SASL__MECHANISMS and the password in SEGMENTER_KAFKA_SASL_PASSWORD "
            "(or the file SEGMENTER_KAFKA_SASL_PASSWORD_FILE names)."
        )
    if KafkaError._SSL in by_code:
        why = by_code[KafkaError._SSL]
        if "certificate verify failed" in why:
            return (
                f"the Kafka broker at {bootstrap} presented a TLS certificate this process "
                f"does not trust ({why}). Set SEGMENTER_KAFKA__SSL__CA__LOCATION to the CA "
                "certificate (PEM) that signed it."
            )
        return (
            f"TLS with the Kafka broker at {bootstrap} failed ({why}). Check "
            "SEGMENTER_KAFKA__SECURITY__PROTOCOL and the SEGMENTER_KAFKA__SSL__* settings."
        )
    return (
        f"cannot reach the Kafka broker at {bootstrap} ({failure.str()}). Start it "
        "(locally: make up) or point SEGMENTER_KAFKA_BOOTSTRAP at a running broker."
    )


def _detail(text: str) -> str:
    """librdkafka's error text without the broker's name before it and the timing after."""
    text = re.sub(r"^\S+://\S+: ", "", text)
    return re.sub(r" \(after \d+ms in state \w+\)$", "", text)


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
