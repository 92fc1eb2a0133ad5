"""The one place that builds Kafka clients (consumer, producer, admin) for every seamline user.

Every client starts from the job's connection settings (``JobSpec.kafka_config()``: bootstrap
and ``[stream.security]``, or a plain ``{"bootstrap.servers": ...}`` for broker helpers) plus
per-use extras, and is quiet: librdkafka's own log lines go to the Python logger
``stream.kafka.client.librdkafka`` at DEBUG, client errors (a broker that refuses connections
repeats one every retry) go to DEBUG through ``error_cb``, and idle connection closes are not
logged at all. Errors reach the user as exceptions from the calls that failed.

Consumers are read-committed, never auto-commit and get a throwaway ``group.id`` unless the
caller names a group: consumer-group offsets are never the source of truth (DESIGN §3).

Secret values (``sasl.password`` and friends) never appear in a log line or an exception text
raised here: they are replaced by ``***``.

>>> consumer_config({"bootstrap.servers": "b:9092"}, group="g")["isolation.level"]
'read_committed'
>>> Scrubber({"sasl.password": "hunter2"}).scrub("auth as x:hunter2 failed")
'auth as x:*** failed'
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from coordinator.core.errors import ConfigError
from coordinator.core.logs import redact

log = logging.getLogger(__name__)

#: librdkafka settings whose values are secrets.
SECRET_KEYS = frozenset(
    {
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
    }
)

#: Settings every client gets (a caller's extras may override them).
QUIET: Mapping[str, Any] = {"log.connection.close": False}

#: Consumer settings below the caller's extras: read committed, never commit by itself.
_CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "isolation.level": "read_committed",
}


class Scrubber:
    """Replaces the secret values of a client configuration (and credential-like text)."""

    def __init__(self, conf: Mapping[str, Any]) -> None:
        self._secrets = sorted(
            (str(v) for k, v in conf.items() if k in SECRET_KEYS and v), key=len, reverse=True
        )

    def scrub(self, text: str) -> str:
        """``text`` with every secret value replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact(text)


class _LibrdkafkaLog:
    """Routes librdkafka's log lines to DEBUG (errors reach the user as exceptions)."""

    _log = logging.getLogger(f"{__name__}.librdkafka")

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber

    def log(self, _level: int, fmt: str, *args: Any) -> None:
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("%s", self._scrubber.scrub(fmt % args if args else fmt))


def _error_callback(scrubber: Scrubber) -> Any:
    def on_error(err: KafkaError) -> None:
        text = scrubber.scrub(err.str())
        if err.fatal():  # the client is unusable; the failing call raises it too
            log.error("kafka client fatal error: %s", text)
        else:  # transient (broker down, reconnecting): repeated every retry, never printed
            log.debug("kafka client error: %s", text)

    return on_error


def quiet_config(conn: Mapping[str, Any], extras: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``conn`` plus ``extras`` with the quiet logger and error callback (no secrets logged)."""
    conf = {**QUIET, **conn, **(extras or {})}
    scrubber = Scrubber(conf)
    conf.setdefault("logger", _LibrdkafkaLog(scrubber))
    conf.setdefault("error_cb", _error_callback(scrubber))
    return conf


def consumer_config(
    conn: Mapping[str, Any],
    *,
    group: str | None = None,
    purpose: str = "reader",
    extras: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Settings of a consumer (without the logger): group, read committed, no auto-commit."""
    return {
        **conn,
        "group.id": group or f"seamline-{purpose}-{uuid.uuid4().hex}",
        **_CONSUMER_DEFAULTS,
        **(extras or {}),
    }


def _build(kind: type[Any], conf: dict[str, Any], what: str) -> Any:
    try:
        return kind(conf)
    except (KafkaException, ValueError, TypeError) as exc:
        detail = Scrubber(conf).scrub(str(exc.args[0] if exc.args else exc))
        raise ConfigError(
            f"kafka {what} bootstrap={conf.get('bootstrap.servers')}: invalid client "
            f"configuration ({detail})",
            hint="check [stream] bootstrap and [stream.security] in the job file",
        ) from None


def consumer(
    conn: Mapping[str, Any],
    *,
    group: str | None = None,
    purpose: str = "reader",
    extras: Mapping[str, Any] | None = None,
) -> Any:
    """A quiet consumer: ``group`` (else a throwaway ``seamline-<purpose>-<uuid>``), read
    committed, no auto-commit; ``extras`` override any of that."""
    conf = consumer_config(conn, group=group, purpose=purpose, extras=extras)
    return _build(Consumer, quiet_config(conf), "consumer")


def producer(conn: Mapping[str, Any], *, extras: Mapping[str, Any] | None = None) -> Any:
    """A quiet producer on ``conn`` plus ``extras``."""
    return _build(Producer, quiet_config(conn, extras), "producer")


def admin(conn: Mapping[str, Any], *, extras: Mapping[str, Any] | None = None) -> Any:
    """A quiet admin client on ``conn`` plus ``extras`` (never creates topics by asking)."""
    conf = quiet_config(conn, {"allow.auto.create.topics": False, **(extras or {})})
    return _build(AdminClient, conf, "admin client")


def plain(bootstrap: str) -> dict[str, str]:
    """Connection settings of a local broker without security (test and broker helpers)."""
    return {"bootstrap.servers": bootstrap}
