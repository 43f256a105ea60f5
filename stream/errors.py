"""The one exception hierarchy of the segmenter.

Every error the segmenter raises on purpose derives from :class:`SegmenterError`, and its
message tells the user what to do about it. The CLI prints the message, not a traceback.
"""

from __future__ import annotations


class SegmenterError(Exception):
    """Root of every error the segmenter raises on purpose."""


class ConfigError(SegmenterError):
    """A setting is missing or has a value that cannot be used; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"config {key}: {problem}")


class BrokerError(SegmenterError):
    """The Kafka broker cannot be reached or refused what we asked of it."""


class TopicLayoutError(BrokerError):
    """Input or output topics are missing or not laid out as the pipeline needs."""


class RedisError(SegmenterError):
    """Redis cannot be reached or refused a command."""


class StateLostError(RedisError):
    """Redis holds less than the consumer group committed: writes were lost."""


class ModelError(SegmenterError):
    """A model checkpoint cannot be read or does not fit the configured features."""


class DevstackError(SegmenterError):
    """The local development stack could not be installed, started or stopped."""
