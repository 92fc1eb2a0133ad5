"""Provide a Kafka broker: the one in ``KAFKA_BOOTSTRAP``, a container, or a local one.

Order of preference:

1. ``KAFKA_BOOTSTRAP=host:port`` when set (it must answer a metadata request);
2. a testcontainers Kafka (KRaft) when a Docker engine answers a ping;
3. a local broker run from Kafka's jars (see :mod:`stream.broker.local`).

``SEAMLINE_KAFKA=container`` or ``SEAMLINE_KAFKA=local`` forces step 2 or 3 (when
``KAFKA_BOOTSTRAP`` is unset); the default ``auto`` tries them in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from coordinator.core.errors import BrokerError
from stream.broker.local import (
    LocalBroker,
    LocalStatus,
    local_status,
    start_local,
    stop_local,
)
from stream.broker.probe import is_serving

log = logging.getLogger(__name__)

__all__ = [
    "CONTAINER_IMAGE",
    "BrokerHandle",
    "BrokerKind",
    "LocalBroker",
    "LocalStatus",
    "docker_available",
    "is_serving",
    "local_status",
    "provide_broker",
    "start_local",
    "stop_local",
]

BrokerKind = Literal["env", "container", "local"]
CONTAINER_IMAGE = "confluentinc/cp-kafka:7.6.0"
_ENV_CHECK_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True)
class BrokerHandle:
    """A broker a caller can use: its bootstrap address, where it came from, its data dir."""

    bootstrap: str
    kind: BrokerKind
    data_dir: Path | None = None


def docker_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers a ping within ``timeout`` seconds (never raises)."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=max(1, int(timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception as exc:  # any failure means: no usable engine
        log.debug("no Docker engine: %s", exc)
        return False


@contextlib.contextmanager
def provide_broker(data_dir: Path) -> Iterator[BrokerHandle]:
    """Yield a serving broker for the block; stop it afterwards if this call started it.

    ``data_dir`` is used only by a local broker.

    Raises:
        BrokerError: no broker could be provided (the message says why and what to do).
    """
    with contextlib.ExitStack() as stack:
        yield _provide(stack, data_dir)


def _provide(stack: contextlib.ExitStack, data_dir: Path) -> BrokerHandle:
    env = os.environ.get("KAFKA_BOOTSTRAP", "").strip()
    if env:
        return _from_env(env)
    mode = os.environ.get("SEAMLINE_KAFKA", "auto").strip().lower() or "auto"
    if mode not in ("auto", "container", "local"):
        raise BrokerError(f"SEAMLINE_KAFKA: expected auto, container or local, found {mode!r}",
                          hint="unset it or set one of those values")
    if mode == "container" or (mode == "auto" and docker_available()):
        return _from_container(stack)
    broker = start_local(data_dir)
    stack.callback(stop_local, data_dir)
    return BrokerHandle(broker.bootstrap, "local", data_dir)


def _from_env(bootstrap: str) -> BrokerHandle:
    if not is_serving(bootstrap, timeout=_ENV_CHECK_TIMEOUT_S):
        raise BrokerError(f"KAFKA_BOOTSTRAP={bootstrap} does not answer a metadata request "
                          f"within {_ENV_CHECK_TIMEOUT_S:.0f}s",
                          hint="start that broker, or unset KAFKA_BOOTSTRAP so seamline "
                          "starts one itself")
    log.info("using the Kafka broker from KAFKA_BOOTSTRAP=%s", bootstrap)
    return BrokerHandle(bootstrap, "env", None)


def _from_container(stack: contextlib.ExitStack) -> BrokerHandle:
    from testcontainers.community.kafka import KafkaContainer

    container = KafkaContainer(CONTAINER_IMAGE).with_kraft()
    stack.callback(_stop_quietly, container)
    try:
        container.start()
    except Exception as exc:
        raise BrokerError(f"could not start a Kafka container ({CONTAINER_IMAGE}): {exc}",
                          hint="check `docker info`, or set SEAMLINE_KAFKA=local") from exc
    bootstrap = str(container.get_bootstrap_server())
    log.info("using a Kafka container at %s", bootstrap)
    return BrokerHandle(bootstrap, "container", None)


def _stop_quietly(container: Any) -> None:
    try:
        container.stop()
    except Exception as exc:  # a container that never started has nothing to stop
        log.debug("stopping the Kafka container failed: %s", exc)
