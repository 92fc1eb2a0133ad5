"""One archive file read into typed rows, its bad rows set aside (DESIGN §7).

A row that fails parsing or type conversion (``amount = not-a-number``, a timestamp in year
10000), holds null in a required field, a timestamp outside years 1..9999, or NaN/Infinity
in a float field (unless the job keeps them) is a :class:`BadRow`: never fatal to the file.

The fast path reads the whole file with Arrow's reader for its format and the job's schema.
When that fails, the file is split into its records (CSV records with the ``csv`` module, so
quoted newlines stay inside their record; JSON lines by line; Parquet rows by position) and
chunks of records are parsed by the same reader with the same options; a failing chunk is
bisected down to the records that fail. So a good row converts exactly as it would in a
clean file, and a bad one is named with its row number, line and Arrow's reason.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from stream.decode.coerce import MAX_MS, MIN_MS, RecordError, is_nested, keeps_non_finite
from stream.decode.json import record_row, rows_table

_PARSE_ERRORS = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
_CSV_COLUMN = re.compile(r"^In CSV column #(\d+): ")
_RAW_MAX = 4096  # characters of a bad row kept in the quarantine


@dataclass(frozen=True)
class BadRow:
    """A row of an archive file that cannot become a table row."""

    file: str
    row: int  # 1-based data row (the CSV header and blank lines not counted)
    line: int | None  # 1-based line where the record starts (CSV, JSON lines)
    error: str
    raw: str  # the record's text (CSV, JSON lines) or its values as JSON (Parquet)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (one quarantine entry)."""
        return {"file": self.file, "row": self.row, "line": self.line,
                "error": self.error, "raw": self.raw}  # fmt: skip


@dataclass(frozen=True)
class FileRows:
    """The good rows of a file (typed to the job's schema), their 1-based row numbers, and
    the file's bad rows (sorted by row)."""

    table: pa.Table
    rows: pa.Array  # int64, aligned with ``table``
    bad: list[BadRow]

    def filter(self, mask: pa.Array | pa.ChunkedArray) -> FileRows:
        """The good rows where ``mask`` is true (the bad rows unchanged)."""
        return FileRows(self.table.filter(mask), pc.filter(self.rows, mask), self.bad)


Parse = Callable[[bytes], pa.Table]


def csv_options(schema: pa.Schema) -> pacsv.ConvertOptions:
    """How CSV cells convert: the job's types, missing nullable columns as nulls."""
    return pacsv.ConvertOptions(
        column_types={f.name: f.type for f in schema},
        include_columns=schema.names,
        include_missing_columns=True,
        strings_can_be_null=True,
    )


def _parse_csv(schema: pa.Schema) -> Parse:
    opts = csv_options(schema)
    return lambda data: pacsv.read_csv(io.BytesIO(data), convert_options=opts)


def _parse_jsonl(schema: pa.Schema) -> Parse:
    if any(is_nested(f.type) for f in schema):  # Arrow's reader has no maps: the stream's checks
        return _parse_json_records(schema)
    opts = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    return lambda data: pajson.read_json(io.BytesIO(data), parse_options=opts)


def _parse_json_records(schema: pa.Schema) -> Parse:
    """JSON lines decoded record by record with the stream decoder's checks (nested types)."""

    def parse(data: bytes) -> pa.Table:
        rows = []
        for line in data.splitlines():
            if line.strip():
                try:
                    rows.append(record_row(line, schema))
                except RecordError as exc:
                    raise pa.ArrowInvalid(str(exc)) from None
        return rows_table(rows, schema)

    return parse


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A Parquet table in the job's schema: columns in order, missing ones null, cast safely."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            cols.append(table[f.name].cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def read_file(path: Path, fmt: str, schema: pa.Schema, shown: str | None = None) -> FileRows:
    """Every row of the file at ``path``: the good ones typed, the bad ones named.

    ``fmt`` is ``csv``, ``jsonl`` or ``parquet``; ``shown`` is the file name quarantine
    entries carry (default: the path). ``OSError`` / ``ArrowInvalid`` when the file itself
    cannot be read (missing, not Parquet).
    """
    name = shown or str(path)
    if fmt == "parquet":
        raw = pq.read_table(path, columns=[n for n in schema.names if n in _names(path)])
        try:
            return checked(conform(raw, schema), schema, name, source=raw)
        except _PARSE_ERRORS:
            return _by_position(raw, schema, name)
    data = path.read_bytes()
    parse = _parse_csv(schema) if fmt == "csv" else _parse_jsonl(schema)
    try:
        found = checked(parse(data), schema, name)
    except _PARSE_ERRORS:
        return _by_record(data, fmt, parse, schema, name)
    # bad rows found by the checks: read again by record, for their text and line numbers
    return _by_record(data, fmt, parse, schema, name) if found.bad else found


def _numbers(positions: list[int]) -> pa.Array:
    return pa.array([i + 1 for i in positions], pa.int64())


def _by_record(data: bytes, fmt: str, parse: Parse, schema: pa.Schema, name: str) -> FileRows:
    """The fast read failed: parse record by record (bisecting), keeping row numbers."""
    header, records = _csv_records(data) if fmt == "csv" else (b"", _json_lines(data))
    good: list[tuple[int, pa.Table]] = []
    failed: dict[int, str] = {}
    _bisect([r for _, r in records], header, parse, 0, len(records), good, failed)
    bad = [
        BadRow(name, i + 1, records[i][0], reason, _show_raw(records[i][1]))
        for i, reason in sorted(failed.items())
    ]
    tables = [t for _, t in good]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    order = [i for lo, t in good for i in range(lo, lo + t.num_rows)]
    return checked(table, schema, name, rows=_numbers(order), bad=bad,
                   lines=[records[i][0] for i in order],
                   raws=[_show_raw(records[i][1]) for i in order])  # fmt: skip


def _bisect(
    records: list[bytes], header: bytes, parse: Parse, lo: int, hi: int,
    good: list[tuple[int, pa.Table]], failed: dict[int, str],
) -> None:  # fmt: skip
    if lo == hi:
        return
    try:
        table = parse(header + b"".join(records[lo:hi]))
        if table.num_rows == hi - lo:
            good.append((lo, table))
            return
        reason = f"expected one record, found {table.num_rows} rows"
    except _PARSE_ERRORS as exc:
        reason = _reason(str(exc), header)
    if hi - lo == 1:
        failed[lo] = reason
        return
    mid = (lo + hi) // 2
    _bisect(records, header, parse, lo, mid, good, failed)
    _bisect(records, header, parse, mid, hi, good, failed)


def _reason(message: str, header: bytes) -> str:
    """Arrow's message with the CSV column number replaced by the column's name."""
    m = _CSV_COLUMN.match(message)
    if m is None or not header:
        return message
    names = next(csv.reader([header.decode("utf-8", "replace")]), [])
    i = int(m.group(1))
    column = repr(names[i]) if i < len(names) else f"#{i}"
    return f"field {column}: {message[m.end():]}"


def _csv_records(data: bytes) -> tuple[bytes, list[tuple[int, bytes]]]:
    """The header and each data record with the line it starts on, split as CSV (quoted
    newlines stay inside their record); blank lines are left out, as Arrow does."""
    lines = io.StringIO(data.decode("utf-8", "surrogateescape"), newline="").readlines()
    taken: list[str] = []

    def feed() -> Iterator[str]:
        for line in lines:
            taken.append(line)
            yield line

    out: list[tuple[int, bytes]] = []
    header, line_no = b"", 1
    reader = csv.reader(feed())
    try:
        for record in reader:
            raw = "".join(taken).encode("utf-8", "surrogateescape")
            start, line_no = line_no, line_no + len(taken)
            taken.clear()
            if not header:
                header = raw if raw.endswith(b"\n") else raw + b"\n"
            elif record:
                out.append((start, raw))
    except csv.Error:  # e.g. a field longer than the csv module takes: the rest is one record
        rest = "".join(lines[line_no - 1 :])
        out.append((line_no, rest.encode("utf-8", "surrogateescape")))
    return header, out


def _json_lines(data: bytes) -> list[tuple[int, bytes]]:
    return [(n, line + b"\n") for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]


def _show_raw(raw: bytes) -> str:
    text = raw.decode("utf-8", "backslashreplace").rstrip("\r\n")
    return text if len(text) <= _RAW_MAX else text[: _RAW_MAX - 3] + "..."


def _names(path: Path) -> list[str]:
    return list(pq.read_schema(path).names)


def _by_position(raw: pa.Table, schema: pa.Schema, name: str) -> FileRows:
    """The whole-file cast failed: cast row ranges (bisecting) down to the rows that fail."""
    good: list[tuple[int, pa.Table]] = []
    failed: dict[int, str] = {}
    _bisect_rows(raw, schema, 0, raw.num_rows, good, failed)
    bad = [
        BadRow(name, i + 1, None, reason, row_json(raw, i)) for i, reason in sorted(failed.items())
    ]
    tables = [t for _, t in good]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    order = [i for lo, t in good for i in range(lo, lo + t.num_rows)]
    return checked(table, schema, name, rows=_numbers(order), bad=bad, source=raw)


def _bisect_rows(
    raw: pa.Table, schema: pa.Schema, lo: int, hi: int,
    good: list[tuple[int, pa.Table]], failed: dict[int, str],
) -> None:  # fmt: skip
    if lo == hi:
        return
    try:
        # take, not slice: a sliced list still casts the items outside the slice
        good.append((lo, conform(raw.take(pa.array(range(lo, hi), pa.int64())), schema)))
        return
    except _PARSE_ERRORS as exc:
        if hi - lo == 1:
            failed[lo] = str(exc)
            return
    mid = (lo + hi) // 2
    _bisect_rows(raw, schema, lo, mid, good, failed)
    _bisect_rows(raw, schema, mid, hi, good, failed)


def row_json(table: pa.Table, i: int) -> str:
    text = json.dumps(table.slice(i, 1).to_pylist()[0], default=str, ensure_ascii=False)
    return text if len(text) <= _RAW_MAX else text[: _RAW_MAX - 3] + "..."


def checked(
    table: pa.Table, schema: pa.Schema, name: str, *, rows: pa.Array | None = None,
    bad: list[BadRow] | None = None, lines: list[int | None] | None = None,
    raws: list[str] | None = None, source: pa.Table | None = None,
) -> FileRows:  # fmt: skip
    """``table`` (rows numbered ``rows``, default 1..n) less the rows with a null required
    field, a timestamp outside years 1..9999 or a non-finite float the job does not keep;
    those join ``bad``. ``raws``/``lines``: each row's text and line; ``source``: the table
    whose values show a flagged row (by row number) when there is no text."""
    rows = rows if rows is not None else pa.array(range(1, table.num_rows + 1), pa.int64())
    bad = list(bad or [])
    flags = [(f.name, why, m) for f in schema for why, m in _flags(table[f.name], f)]
    flags = [(n, why, m) for n, why, m in flags if pc.any(m).as_py()]
    if not flags:
        return FileRows(_typed(table, schema), rows, sorted(bad, key=lambda b: b.row))
    reasons: dict[int, str] = {}
    for column, why, mask in flags:
        for i in pc.indices_nonzero(mask).to_pylist():
            reasons.setdefault(i, f"field {column!r}: {why}")
    numbers = rows.to_pylist()
    for i, why in reasons.items():
        shown = source if source is not None else table
        raw = raws[i] if raws else row_json(shown, numbers[i] - 1 if source is not None else i)
        bad.append(BadRow(name, numbers[i], lines[i] if lines else None, why, raw))
    keep = pa.array([i not in reasons for i in range(table.num_rows)], pa.bool_())
    good = _typed(table.filter(keep), schema)
    return FileRows(good, pc.filter(rows, keep), sorted(bad, key=lambda b: b.row))


def _typed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` under the job's schema (its nullability and field metadata)."""
    return table if table.schema == schema else pa.Table.from_arrays(table.columns, schema=schema)


def _flags(col: pa.ChunkedArray, f: pa.Field) -> list[tuple[str, pa.ChunkedArray]]:
    out = []
    if not f.nullable:
        out.append(("required field is empty or null", col.is_null()))
    if pa.types.is_timestamp(f.type):
        per_ms = {"s": 1 / 1000, "ms": 1, "us": 1000, "ns": 1_000_000}[f.type.unit]
        raw = col.cast(pa.int64())
        outside = pc.or_(pc.less(raw, int(MIN_MS * per_ms)), pc.greater(raw, int(MAX_MS * per_ms)))
        out.append(("expected a timestamp in years 1..9999", outside.fill_null(False)))
    if pa.types.is_floating(f.type) and not keeps_non_finite(f):
        out.append(("expected a finite number", pc.invert(pc.is_finite(col)).fill_null(False)))
    return out
