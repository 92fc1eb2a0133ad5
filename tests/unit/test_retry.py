"""The one retry policy: bounded, monotone, never negative delays; what is retried."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool

import pyarrow as pa
import pytest
from confluent_kafka import KafkaError, KafkaException
from hypothesis import given
from hypothesis import strategies as st

from coordinator.core.errors import (
    CommitConflictError,
    CommitOutcomeUnknownError,
    ConfigError,
    DuplicateKeyError,
    SourceDataLossError,
    SourceError,
    StaleEpochError,
)
from coordinator.core.retry import RetryPolicy, call_with_retry, is_retriable, transient

policies = st.builds(
    lambda attempts, base, extra, jitter: RetryPolicy(attempts, base, base + extra, jitter),
    st.integers(1, 100),
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0, 1e6, allow_nan=False),
    st.sampled_from(["full", "equal", "none"]),
)
units = st.floats(0, 1, exclude_max=True)


@given(policies, st.integers(1, 5000), units)
def test_delays_are_bounded_and_never_negative(p: RetryPolicy, attempt: int, u: float) -> None:
    d = p.delay(attempt, lambda: u)
    assert 0 <= d <= p.cap(attempt) <= p.max_s
    if p.jitter == "equal":
        assert d >= p.cap(attempt) / 2
    if p.jitter == "none":
        assert d == p.cap(attempt)


@given(policies, st.integers(1, 5000))
def test_the_cap_never_decreases_and_reaches_max(p: RetryPolicy, attempt: int) -> None:
    assert p.cap(attempt) <= p.cap(attempt + 1)
    assert p.cap(1) == min(p.base_s, p.max_s)
    if p.base_s > 0 and p.max_s < 1e300:
        assert p.cap(5000) == p.max_s


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "expected attempts >= 1, found attempts=0"),
        ({"base_s": -1.0}, "expected a finite base_s >= 0, found base_s=-1.0"),
        ({"base_s": 2.0, "max_s": 1.0}, "expected a finite max_s >= base_s, found max_s=1.0"),
        ({"max_s": float("inf")}, "found max_s=inf"),
        ({"jitter": "half"}, "expected jitter in ('full', 'equal', 'none'), found jitter='half'"),
    ],
)
def test_bad_policies_are_refused_with_what_was_wrong(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (CommitConflictError("c"), True),
        (CommitOutcomeUnknownError("u"), True),
        (transient(SourceError("topic=t: no progress for 30s")), True),
        (SourceError("topic=t: not authorised"), False),
        (ConfigError("bad"), False),
        (SourceDataLossError("gone"), False),
        (DuplicateKeyError("dup"), False),
        (StaleEpochError("old"), False),
        (KafkaException(KafkaError(KafkaError._TIMED_OUT)), True),
        (KafkaException(KafkaError(KafkaError._TRANSPORT)), True),
        (KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)), False),
        (KafkaException(KafkaError(KafkaError._FATAL, fatal=True)), False),
        (BrokenProcessPool("a worker died"), True),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (RuntimeError("lance: commit conflict"), True),
        (TypeError("bad arg"), False),
        (KeyError("k"), False),
        (pa.ArrowInvalid("cannot convert"), False),
        (KeyboardInterrupt(), False),
    ],
)
def test_what_is_retried(exc: BaseException, retried: bool) -> None:
    assert is_retriable(exc) is retried


def test_call_with_retry_waits_between_retriable_failures_only() -> None:
    calls: list[int] = []
    waits: list[float] = []
    seen: list[tuple[int, str, float]] = []

    def flaky() -> str:
        calls.append(len(calls) + 1)
        if len(calls) < 3:
            raise CommitConflictError(f"conflict {len(calls)}")
        return "done"

    policy = RetryPolicy(attempts=5, base_s=0.5, max_s=10.0, jitter="none")
    out = call_with_retry(
        flaky, policy, sleep=waits.append, on_retry=lambda n, e, d: seen.append((n, str(e), d))
    )
    assert out == "done" and calls == [1, 2, 3]
    assert waits == [0.5, 1.0]
    assert seen == [(1, "conflict 1", 0.5), (2, "conflict 2", 1.0)]


def test_call_with_retry_gives_up_after_the_last_attempt_and_on_terminal_errors() -> None:
    waits: list[float] = []
    policy = RetryPolicy(attempts=3, base_s=0.1, max_s=0.1, jitter="none")

    def always(exc: Exception) -> None:
        raise exc

    with pytest.raises(OSError, match="disk"):
        call_with_retry(lambda: always(OSError("disk")), policy, sleep=waits.append)
    assert waits == [0.1, 0.1]  # three calls, two waits
    waits.clear()
    with pytest.raises(ConfigError):
        call_with_retry(lambda: always(ConfigError("bad")), policy, sleep=waits.append)
    assert waits == []
    with pytest.raises(ValueError):  # a caller's own classifier
        call_with_retry(
            lambda: always(ValueError("x")), policy, sleep=waits.append, retry_on=lambda e: True
        )
    assert waits == [0.1, 0.1]
