"""The Kafka side and the process: consume loop, producing, offsets, metrics, health, CLI,
and the local development stack."""
