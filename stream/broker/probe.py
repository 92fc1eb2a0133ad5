"""Is a Kafka broker serving? A cheap TCP check, then a metadata request."""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)


def split_bootstrap(bootstrap: str) -> tuple[str, int]:
    """The host and port of the first ``host:port`` in a bootstrap list.

    >>> split_bootstrap("127.0.0.1:9092,other:9093")
    ('127.0.0.1', 9092)
    """
    first = bootstrap.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "localhost", int(port)


def port_open(bootstrap: str, timeout: float = 1.0) -> bool:
    """True when a TCP connection to the first bootstrap address succeeds."""
    try:
        host, port = split_bootstrap(bootstrap)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def is_serving(bootstrap: str, timeout: float = 5.0) -> bool:
    """True when the broker at ``bootstrap`` answers a metadata request with a broker list."""
    if not port_open(bootstrap, timeout=min(timeout, 1.0)):
        return False
    from confluent_kafka import KafkaException

    from stream.kafka import client

    extras = {"socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000))}
    admin = client.admin(client.plain(bootstrap), extras=extras)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        log.debug("broker at %s not serving yet: %s", bootstrap, exc)
        return False
    return bool(metadata.brokers)
