"""JSON log lines stay whole when the coordinator and its workers share one stderr: each line
is one write of at most ``LINE_BYTES`` (a pipe never interleaves such writes), and a longer
record is split into parts that join back to the whole, redacted."""

from __future__ import annotations

import json
import logging
import sys

from coordinator.core.logs import LINE_BYTES, JsonFormatter, LineHandler, RedactingFilter
from tests.unit.test_progress_lines import Writes


def emit(msg: str, exc: bool) -> Writes:
    out = Writes()
    handler = LineHandler(out)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    record = logging.LogRecord("seamline.test", logging.ERROR, __file__, 1, msg, None, None)
    if exc:
        try:
            raise ValueError("x" * 3_000 + " postgresql://u:hunter2@db/x")
        except ValueError:
            record.exc_info = sys.exc_info()
    handler.handle(record)
    return out


def test_a_short_record_is_one_line_in_one_write() -> None:
    out = emit("slice committed", exc=False)
    assert len(out.calls) == 1 and out.calls[0].endswith("\n")
    doc = json.loads(out.calls[0])
    assert doc["msg"] == "slice committed" and "part" not in doc


def test_a_long_record_becomes_parts_of_one_write_each_that_join_back() -> None:
    msg = 'quote " backslash \\ é ✓ 😀 ' * 700 + "password=hunter2"
    out = emit(msg, exc=True)
    assert len(out.calls) > 3
    docs = []
    for call in out.calls:
        assert call.endswith("\n") and call.count("\n") == 1, call[:80]
        assert len(call.encode()) - 1 <= LINE_BYTES
        docs.append(json.loads(call))
    assert [d["part"] for d in docs] == list(range(1, len(docs) + 1))
    assert {d["parts"] for d in docs} == {len(docs)}
    assert {(d["level"], d["logger"]) for d in docs} == {("ERROR", "seamline.test")}
    whole = "".join(d["msg"] for d in docs)
    text, _, exc = whole.partition("\nTraceback (most recent call last):")
    assert text == msg.replace("password=hunter2", "password=***")
    assert "ValueError: " + "x" * 3_000 in exc and "hunter2" not in whole
