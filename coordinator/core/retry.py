"""One retry policy for every loop that retries: slices, sink commits, live batches.

A :class:`RetryPolicy` says how often and how long to wait: exponential backoff from
``base_s`` doubling per attempt, capped at ``max_s``, with jitter so that writers that
collided once do not collide again in lock step:

* ``full``: uniform in ``[0, cap]`` (the AWS "full jitter": fewest collisions);
* ``equal``: uniform in ``[cap / 2, cap]`` (a guaranteed minimum wait);
* ``none``: exactly ``cap`` (deterministic; for tests and tools).

What is worth retrying is decided by :func:`is_retriable`, in this order:

1. A :class:`~coordinator.core.errors.SeamlineError` is retried iff its ``transient`` flag is
   set (class default, or set on the instance where the raiser knows better, see
   :func:`transient`). Conflicts and "outcome unknown" are transient; configuration, data
   loss, duplicate keys and a stale epoch are not.
2. Programming and data errors are terminal: a retry runs the same code on the same input
   (``TypeError``, ``ValueError`` and its Arrow subclasses, ``LookupError``,
   ``AttributeError``, ``NameError``, ``ImportError``, ``AssertionError``,
   ``NotImplementedError``, ``ArithmeticError``, ``RecursionError``).
3. A Kafka client error (``confluent_kafka.KafkaException``) is retried unless librdkafka
   says it is fatal or not retriable.
4. Everything else is transient: I/O and network errors (``OSError``, ``TimeoutError``,
   ``ConnectionError``), a dead worker process (``BrokenProcessPool``), table-format library
   errors (pyiceberg's ``CommitFailedException``, Lance's ``OSError``/``RuntimeError``). The
   number of attempts bounds the cost of a wrong guess; the commit token makes a retried
   slice idempotent.

``BaseException`` s that are not ``Exception`` s (``KeyboardInterrupt``, ``SystemExit``) are
never caught.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from coordinator.core.errors import SeamlineError

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E", bound=SeamlineError)

Jitter = Literal["full", "equal", "none"]
_JITTERS: tuple[Jitter, ...] = ("full", "equal", "none")

_TERMINAL: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    LookupError,
    AttributeError,
    NameError,
    ImportError,
    AssertionError,
    NotImplementedError,
    ArithmeticError,
    RecursionError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``attempts`` calls; before call ``n + 1`` wait :meth:`delay` ``(n)`` seconds.

    >>> p = RetryPolicy(attempts=4, base_s=1.0, max_s=3.0, jitter="none")
    >>> [p.delay(n) for n in (1, 2, 3)]
    [1.0, 2.0, 3.0]
    """

    attempts: int = 5
    base_s: float = 1.0
    max_s: float = 60.0
    jitter: Jitter = "full"

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.attempts, int) or self.attempts < 1:
            problems.append(f"attempts >= 1, found attempts={self.attempts!r}")
        if not (math.isfinite(self.base_s) and self.base_s >= 0):
            problems.append(f"a finite base_s >= 0, found base_s={self.base_s!r}")
        if not (math.isfinite(self.max_s) and self.max_s >= self.base_s):
            problems.append(f"a finite max_s >= base_s, found max_s={self.max_s!r}")
        if self.jitter not in _JITTERS:
            problems.append(f"jitter in {_JITTERS}, found jitter={self.jitter!r}")
        if problems:
            raise ValueError("retry policy: expected " + "; expected ".join(problems))

    def cap(self, attempt: int) -> float:
        """The longest wait after failed call ``attempt`` (1-based): ``base_s * 2**(n-1)``
        capped at ``max_s``; never decreasing in ``attempt``."""
        if attempt < 1:
            raise ValueError(f"expected attempt >= 1, found attempt={attempt}")
        if self.base_s == 0:
            return 0.0
        if attempt > 2100:  # 2**2099 times the smallest positive float exceeds any float
            return float(self.max_s)
        try:
            return float(min(self.max_s, math.ldexp(self.base_s, attempt - 1)))
        except OverflowError:
            return float(self.max_s)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed call ``attempt``: in ``[0, cap(attempt)]``.

        ``rand`` returns a float in ``[0, 1)`` (injected by tests).
        """
        cap = self.cap(attempt)
        if self.jitter == "none":
            return cap
        u = min(max(rand(), 0.0), 1.0)
        if self.jitter == "equal":
            return cap / 2 + u * cap / 2
        return u * cap


def transient(exc: E) -> E:
    """Mark one error instance as worth retrying (e.g. a Kafka read that timed out);
    returns it, for ``raise transient(SourceError(...))``."""
    exc.transient = True
    return exc


#: Where confluent-kafka's exception classes live (its C extension is ``cimpl``).
_KAFKA_MODULES = ("confluent_kafka", "cimpl")

#: librdkafka codes for timeouts and lost connections (``-185``, ``-195``, ``-187``, ``7``):
#: not flagged retriable by librdkafka, but a later call usually succeeds.
_KAFKA_TIMEOUT_CODES = frozenset({-185, -195, -187, 7})


def _kafka_retriable(exc: BaseException) -> bool | None:
    """``None`` if ``exc`` is not a confluent-kafka error, else whether to retry it."""
    if not any(c.__module__.startswith(_KAFKA_MODULES) for c in type(exc).__mro__):
        return None
    err = exc.args[0] if exc.args else None
    fatal = getattr(err, "fatal", None)
    retriable = getattr(err, "retriable", None)
    if callable(fatal) and fatal():
        return False
    if callable(retriable) and callable(fatal):
        code = getattr(err, "code", lambda: None)()
        return bool(retriable()) or code in _KAFKA_TIMEOUT_CODES
    return True


def is_retriable(exc: BaseException) -> bool:
    """Whether another attempt may succeed (the rules are in the module docstring).

    >>> from coordinator.core.errors import CommitConflictError, ConfigError
    >>> is_retriable(CommitConflictError("x")), is_retriable(ConfigError("x"))
    (True, False)
    >>> is_retriable(ConnectionResetError()), is_retriable(KeyError("k"))
    (True, False)
    """
    if not isinstance(exc, Exception):
        return False
    if isinstance(exc, SeamlineError):
        return bool(exc.transient)
    if isinstance(exc, _TERMINAL):
        return False
    kafka = _kafka_retriable(exc)
    return True if kafka is None else kafka


def call_with_retry(
    fn: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    retry_on: Callable[[BaseException], bool] = is_retriable,
    rand: Callable[[], float] = random.random,
) -> T:
    """Call ``fn`` until it returns, at most ``policy.attempts`` times.

    A failure ``retry_on`` accepts (default :func:`is_retriable`) is followed by
    ``on_retry(attempt, exc, delay)`` and ``sleep(delay)``; any other failure, and the
    failure of the last attempt, propagates unchanged.
    """
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == policy.attempts or not retry_on(exc):
                raise
            delay = policy.delay(attempt, rand)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            else:
                log.info("attempt %d failed, retrying in %.3fs: %s", attempt, delay, exc)
            sleep(delay)
    raise AssertionError("unreachable: policy.attempts >= 1")


__all__ = ["Jitter", "RetryPolicy", "call_with_retry", "is_retriable", "transient"]
