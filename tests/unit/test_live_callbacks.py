"""Rebalance callbacks never raise into librdkafka: an exception escaping one was left
pending inside ``consume()`` and surfaced as a ``SystemError`` at the client's next C call
(``KafkaError.code``), hiding the real error. The loop keeps it and re-raises it after
``consume()``; a commit refused while partitions are revoked or lost is not fatal."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

import pytest

from coordinator.core.errors import CommitConflictError
from stream.live.core import LiveBook
from stream.live.loop import LiveConsumer


def _loop() -> LiveConsumer:
    loop = LiveConsumer.__new__(LiveConsumer)  # no consumer, no sink: callbacks only
    loop._deferred = None
    loop._book = LiveBook()
    return loop


def test_an_exception_in_a_callback_is_kept_and_raised_after_consume() -> None:
    loop = _loop()

    def on_assign(consumer: Any, tps: list[Any]) -> None:
        raise RuntimeError("catalog unreachable while reading start positions")

    loop._guarded(on_assign)(None, [])  # what librdkafka calls: returns normally
    loop._guarded(on_assign)(None, [])  # a second one does not hide the first
    with pytest.raises(RuntimeError, match="catalog unreachable"):
        loop._raise_deferred()
    loop._raise_deferred()  # raised once only


def test_a_commit_refused_while_partitions_are_lost_is_not_fatal() -> None:
    loop = _loop()
    refused: Future[Any] = Future()
    refused.set_exception(CommitConflictError("table moved: not applied"))
    loop._inflight = refused
    loop._on_lost(None, [])  # logged; the partitions are re-read from the table
    assert loop._inflight is None and loop._deferred is None
