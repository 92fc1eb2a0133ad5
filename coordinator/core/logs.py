"""Logging set-up and redaction, shared by the CLI, slice workers and the Faust engine.

Library modules just call ``logging.getLogger``. A process that prints anything installs
:func:`configure_logging` (the CLI) or :func:`configure_worker_logging` (a slice worker, a
Faust worker after mode's own set-up): one stderr handler whose formatter redacts every
credential (:func:`redact`) from the message *and* any traceback, as text or JSON lines.
The coordinator's settings travel to spawned workers in the environment
(:func:`current_log_settings`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

#: Environment variables carrying the coordinator's log settings to worker processes.
LEVEL_ENV = "SEAMLINE_LOG_LEVEL"
JSON_ENV = "SEAMLINE_LOG_JSON"

# Words that make a key secret (matched anywhere in a key like ``s3.secret-access-key``).
_SECRET_WORDS = (
    r"password|passwd|passphrase|pwd|passfile|secret|token|credentials?|"
    r"access[_.-]?key(?:[_.-]?id)?|account[_.-]?key|api[_.-]?key|private[_.-]?key|"
    r"connection[_.-]?string|authorization|signature"
)
_KEY = rf"(?:[\w.-]*?(?:{_SECRET_WORDS})[\w.-]*|sig|auth)"
_VALUE = r"(?P<secret>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s,;&'\"}\])]+)"

_SECRET_PATTERNS = (
    # scheme://user:password@host and scheme://:password@host (spaces and '@' included)
    re.compile(
        r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*:)(?P<secret>[^/\n'\"]*)(?P<post>@)"
    ),
    # Authorization: Bearer <token> / Basic <b64>
    re.compile(r"(?P<pre>\b(?:[Bb]earer|BEARER|Basic)\s+)(?P<secret>[A-Za-z0-9._~+/=-]+)(?P<post>)"),
    # key=value for secret-like keys (quoted values are masked whole)
    re.compile(rf"(?P<pre>(?<![\w.-])['\"]?{_KEY}['\"]?\s*=\s*){_VALUE}(?P<post>)", re.I),
    # key: value, "key": "value", 'key': 'value' (not the `key=a.b.secret: ...` of messages)
    re.compile(rf"(?P<pre>(?<![\w.=-])['\"]?{_KEY}['\"]?\s*:\s*){_VALUE}(?P<post>)", re.I),
)


def _mask(m: re.Match[str]) -> str:
    secret = m.group("secret")
    quote = secret[0] if secret[:1] in ("'", '"') and len(secret) > 1 else ""
    return f"{m.group('pre')}{quote}***{quote}{m.group('post')}"


def redact(text: str) -> str:
    """Replace anything that looks like a credential in ``text`` with ``***``.

    >>> redact("postgresql://app:hunter2@db/x")
    'postgresql://app:***@db/x'
    >>> redact("sasl.password=abc def")
    'sasl.password=*** def'
    >>> redact("{'s3.secret-access-key': 'a b'}")
    "{'s3.secret-access-key': '***'}"
    """
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(_mask, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts secrets from every record's message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class RedactingFormatter(logging.Formatter):
    """Plain text lines; the whole formatted line (traceback included) is redacted."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


#: Longest log line written in one piece. POSIX writes of at most PIPE_BUF (4,096) bytes to a
#: pipe are never interleaved with another process's: the coordinator and its workers share
#: one stderr, so a longer JSON record is split into parts that each fit.
LINE_BYTES = 4_000


class JsonFormatter(logging.Formatter):
    """One JSON object per line, message and traceback redacted.

    A record whose line would exceed :data:`LINE_BYTES` becomes several lines: each holds the
    record's ``ts``, ``level`` and ``logger``, ``part`` and ``parts`` (1-based), and a piece of
    ``msg``; joined in order, the pieces are the message, then a newline and the traceback.
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        line = json.dumps(doc)
        if len(line) <= LINE_BYTES:  # json.dumps escapes to ASCII: characters are bytes
            return line
        return "\n".join(split_record(doc))


def split_record(doc: dict[str, Any]) -> list[str]:
    """``doc`` (with ``msg`` and maybe ``exc``) as JSON lines of at most :data:`LINE_BYTES`."""
    text = doc["msg"] + ("\n" + doc["exc"] if "exc" in doc else "")
    head = {k: doc[k] for k in ("ts", "level", "logger")}
    room = LINE_BYTES - len(json.dumps({**head, "msg": "", "part": 10**6, "parts": 10**6}))
    pieces, start = [], 0
    while start < len(text):
        size = room
        while len(json.dumps(text[start : start + size])) - 2 > room:  # escapes grow a piece
            size = max(1, size // 2)
        pieces.append(text[start : start + size])
        start += size
    n = len(pieces)
    return [json.dumps({**head, "msg": p, "part": i, "parts": n}) for i, p in enumerate(pieces, 1)]


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr handler that writes each line of a formatted record with its own write, so a
    JSON line never shares a write with another (see :data:`LINE_BYTES`)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            for line in text.split("\n") if isinstance(self.formatter, JsonFormatter) else [text]:
                self.stream.write(line + self.terminator)
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def _excepthook(
    kind: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """An uncaught exception goes through the redacting handler (as JSON with --log-json)."""
    if issubclass(kind, KeyboardInterrupt) or not logging.getLogger().handlers:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, exc, tb))))
        return
    logging.getLogger("seamline").critical(
        "unexpected error: %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb)
    )


def _install(level: str | int, json_lines: bool) -> None:
    handler = LineHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if json_lines else RedactingFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _excepthook


def configure_logging(level: str, *, json_lines: bool = False) -> None:
    """Configure the root logger once for a CLI process (and its future workers)."""
    os.environ[LEVEL_ENV] = level
    os.environ[JSON_ENV] = "1" if json_lines else "0"
    _install(level, json_lines)


def current_log_settings() -> tuple[str, bool]:
    """``(level, json_lines)`` the coordinator configured (defaults: WARNING, text)."""
    level = os.environ.get(LEVEL_ENV) or logging.getLevelName(logging.getLogger().level)
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        level = "WARNING"
    return level, os.environ.get(JSON_ENV) == "1"


def configure_worker_logging(level: str | None = None, json_lines: bool | None = None) -> None:
    """Install the coordinator's redacting handler in a worker process (pool initializer).

    ``None`` takes the value the coordinator left in the environment. Idempotent.
    """
    env_level, env_json = current_log_settings()
    lvl = env_level if level is None else level
    as_json = env_json if json_lines is None else json_lines
    root = logging.getLogger()
    want = JsonFormatter if as_json else RedactingFormatter
    if len(root.handlers) == 1 and type(root.handlers[0].formatter) is want:
        root.setLevel(lvl)
        return
    _install(lvl, as_json)


def write_private(path: Path, text: str, mode: int = 0o640) -> None:
    """Write ``text`` to ``path`` readable by owner and group only (reports, state files).

    A file that already exists is narrowed to ``mode`` as well.
    """
    fd = os.open(path, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
