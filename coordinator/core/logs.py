"""Logging set-up for the CLI only (library modules just call ``logging.getLogger``)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

_SECRET_PATTERNS = (
    # user:password@ in URLs
    re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)(?P<secret>[^@\s]+)(?P<post>@)"),
    # key=value / key: value for secret-like keys
    re.compile(
        r"(?P<pre>(?:password|passwd|secret|token|credential|sasl\.password"
        r"|access[_-]?key(?:[_-]?id)?|secret[_-]?(?:access[_-]?)?key)"
        r"['\"]?\s*[=:]\s*['\"]?)(?P<secret>[^'\"\s,}]+)(?P<post>)",
        re.IGNORECASE,
    ),
)


def redact(text: str) -> str:
    """Replace anything that looks like a credential in ``text`` with ``***``.

    >>> redact("postgresql://app:hunter2@db/x")
    'postgresql://app:***@db/x'
    >>> redact("sasl.password=abc def")
    'sasl.password=*** def'
    """
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: f"{m.group('pre')}***{m.group('post')}", text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts secrets from every record before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc)


def configure_logging(level: str, *, json_lines: bool = False) -> None:
    """Configure the root logger once for a CLI process."""
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
