"""An exactly-once oracle that shares no code with the reconciler: only the job file.

It reads the topic with its OWN ``read_committed`` consumer (built here on purpose, outside
``stream/kafka``: an oracle that reused the product's reader would inherit its bugs) and the
table with the format's own reader (a pyiceberg scan, a Lance dataset), and compares offsets
row by row. Everything is counted separately and every count must be 0:

* ``lost``: a good source record (overwrite) or a source key (merge) with no row;
* ``duplicated``: extra rows of one ``(partition, offset)``;
* ``phantom``: rows whose offset holds no good committed record (aborted, poison, invented);
* ``overlap``: offsets with rows from both sides (backfill and live);
* ``wrong_side``: a row below the cut's ``hwm`` written by live, or at/above it by backfill;
* ``wrong_value``: a row whose key column differs from its source record;
* merge mode: ``key_duplicates`` (extra rows of one key, whatever side or source wrote them)
  and ``stale`` (a key's row is not its newest version). "Newest" is decided here from the job
  file alone: the ``[table] version`` column when declared (null oldest), then archive rows
  (read with pyarrow from ``[[history.archive]]``) below Kafka records, then partition, then
  offset.
* merge mode with ``[table] delete_when``: a record whose marker field equals the declared value
  (or, with ``null_value = true``, a record with a message key and a null value) is a
  tombstone, a version like any other. When a key's newest version is a tombstone its one
  row must carry ``_seamline_deleted = true`` (else ``resurrected``: readers would see a deleted
  key); when it is not, the row must not (else ``wrongly_deleted``). ``tombstones`` and
  ``deleted_keys`` are counted for the report, not as anomalies.

A source record is *good* when its value is a JSON object holding every field the schema
requires (columns declared as the message key in ``[schema.kafka]`` are read from the key);
anything else is poison (it must be in the dead-letter topic, not the table).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from coordinator.core.jobspec import JobSpec

log = logging.getLogger(__name__)

Pos = tuple[int, int]  # (partition, offset)
COUNTS = ("lost", "duplicated", "phantom", "overlap", "wrong_side", "wrong_value",
          "key_duplicates", "stale", "resurrected", "wrongly_deleted")


@dataclass
class OracleReport:
    """What the oracle found; :attr:`anomalies` is the sum of every count."""

    mode: str
    source_records: int = 0
    poison: int = 0
    table_rows: int = 0
    lost: int = 0
    duplicated: int = 0
    phantom: int = 0
    overlap: int = 0
    wrong_side: int = 0
    wrong_value: int = 0
    key_duplicates: int = 0
    stale: int = 0
    resurrected: int = 0
    wrongly_deleted: int = 0
    tombstones: int = 0  # source versions (archive rows and records) that are tombstones
    deleted_keys: int = 0  # keys whose newest version is a tombstone
    examples: list[str] = field(default_factory=list)

    @property
    def anomalies(self) -> int:
        return sum(int(getattr(self, c)) for c in COUNTS)

    def note(self, kind: str, what: object) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {what}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "anomalies": self.anomalies}


def read_topic(job: JobSpec, timeout_s: float = 60.0) -> dict[Pos, bytes | None]:
    """Every committed record of the job's topic, ``(partition, offset) -> value``."""
    return {pos: value for pos, (value, _) in read_keyed(job, timeout_s).items()}


def read_keyed(job: JobSpec, timeout_s: float = 60.0) -> dict[Pos, tuple[bytes | None, bytes | None]]:
    """Every committed record of the job's topic, ``(partition, offset) -> (value, key)``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    conf = {**job.kafka_config(), "group.id": f"seamline-oracle-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "enable.partition.eof": False}
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(job.stream.topic, timeout=10)
        parts = sorted(meta.topics[job.stream.topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(job.stream.topic, p), 10)[1]
                for p in parts}
        consumer.assign([TopicPartition(job.stream.topic, p, OFFSET_BEGINNING) for p in parts])
        return _drain(consumer, job.stream.topic, ends, timeout_s)
    finally:
        consumer.close()


def _drain(consumer: Any, topic: str, ends: Mapping[int, int], timeout_s: float
           ) -> dict[Pos, tuple[bytes | None, bytes | None]]:
    from confluent_kafka import TopicPartition

    out: dict[Pos, tuple[bytes | None, bytes | None]] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for m in consumer.consume(1000, 0.5):
            if m.error() is None:
                out[(m.partition(), m.offset())] = (m.value(), m.key())
        pos = consumer.position([TopicPartition(topic, p) for p in ends])
        if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in pos):
            return out
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic={topic}: expected to read up to {dict(ends)} "
                               f"within {timeout_s}s, found positions {pos}")


def read_table(job: JobSpec) -> pa.Table:
    """Every row of the job's table, read with the format's own library."""
    t = job.table
    if t.format == "lance":
        import lance

        uri = t.uri or ""
        options = t.storage.lance_options() if t.storage.is_set() else None
        uri = uri if "://" in uri else str(job.resolve(uri))
        return lance.dataset(uri, storage_options=options).to_table()
    from pyiceberg.catalog import load_catalog

    spec = t.catalog_spec()
    if spec is None or t.identifier is None:
        raise ValueError("expected table.catalog and table.identifier for iceberg")
    wh = t.catalog_warehouse()
    if wh is not None and "://" not in wh:
        wh = job.resolve(wh).as_uri()
    catalog = load_catalog(
        spec.name, **{**t.storage.iceberg_properties(), **spec.load_properties(wh)}
    )
    try:
        return catalog.load_table(t.identifier).scan().to_arrow()
    finally:
        engine = getattr(catalog, "engine", None)  # a SQL catalog's connection pool
        if engine is not None:
            engine.dispose()


def good_records(job: JobSpec, records: Mapping[Pos, bytes | None],
                 keys: Mapping[Pos, bytes | None] | None = None) -> dict[Pos, dict[str, Any]]:
    """The records the table must reflect: JSON objects holding every required field (key
    columns from ``keys``), and with ``delete_when = { null_value = true }`` each null value
    with a key (a tombstone: its key columns and ``_seamline_deleted``)."""
    need = set(job.schema_.required)
    marker = job.table.delete_when
    nulls = marker is not None and marker.null_value
    out: dict[Pos, dict[str, Any]] = {}
    for pos, value in records.items():
        keyed = _from_key(job, (keys or {}).get(pos))
        if value is None:
            if nulls and keyed:
                out[pos] = {**keyed, "_seamline_deleted": True}
            continue
        try:
            doc = json.loads(value)
        except ValueError:
            continue
        if isinstance(doc, dict) and need <= {*doc.keys(), *keyed}:
            out[pos] = {**doc, **keyed}
    return out


def _from_key(job: JobSpec, key: bytes | None) -> dict[str, Any]:
    """The columns ``[schema.kafka]`` reads from the message key (``{}``: none, or the key
    does not convert: the record is poison)."""
    cols = {c: s for c, s in job.schema_.kafka.items() if s.split(":")[0] == "key"}
    if key is None or not cols:
        return {}
    out: dict[str, Any] = {}
    try:
        for col, source in cols.items():
            if source.endswith(":json"):
                out[col] = json.loads(key)
            elif job.schema_.fields[col].startswith(("int", "uint")):
                out[col] = int(key.decode("ascii"))
            else:
                out[col] = key.decode("utf-8")
    except ValueError:
        return {}
    return out


def check(job: JobSpec, hwm: Mapping[int, int] | None = None, *, key: str = "order_id"
          ) -> OracleReport:
    """Read both sides and count every anomaly (``hwm``: the cut, for ``wrong_side``)."""
    keyed = read_keyed(job)
    records = {pos: value for pos, (value, _) in keyed.items()}
    good = good_records(job, records, {pos: key for pos, (_, key) in keyed.items()})
    rows = read_table(job)
    kafka = [r for r in rows.to_pylist() if r.get("_kafka_offset") is not None]
    report = OracleReport(job.backfill.mode, len(records), len(records) - len(good),
                          rows.num_rows)
    _rows_vs_source(report, kafka, good, hwm or {}, key)
    if job.backfill.mode == "merge":
        marker = job.table.delete_when
        tomb = marker.marker() if marker is not None else None
        _merge(report, rows.to_pylist(), good, read_archive(job), key, job.table.version, tomb)
    else:
        seen = {(r["_kafka_partition"], r["_kafka_offset"]) for r in kafka}
        for pos in sorted(good.keys() - seen):
            report.note("lost", f"partition={pos[0]} offset={pos[1]}")
    return report


def _rows_vs_source(report: OracleReport, kafka: list[dict[str, Any]],
                    good: Mapping[Pos, dict[str, Any]], hwm: Mapping[int, int], key: str) -> None:
    sides: dict[Pos, set[str]] = {}
    count: Counter[Pos] = Counter()
    for r in kafka:
        pos = (r["_kafka_partition"], r["_kafka_offset"])
        count[pos] += 1
        sides.setdefault(pos, set()).add(r["_seamline_side"])
        src = good.get(pos)
        if src is None:
            report.note("phantom", f"partition={pos[0]} offset={pos[1]}")
        elif src.get(key) != r.get(key):
            report.note("wrong_value", f"partition={pos[0]} offset={pos[1]} {key}={r.get(key)}")
        if pos[0] in hwm:
            want = "backfill" if pos[1] < hwm[pos[0]] else "live"
            if r["_seamline_side"] != want:
                report.note("wrong_side", f"partition={pos[0]} offset={pos[1]} "
                                          f"expected {want}, found {r['_seamline_side']}")
    for pos, n in count.items():
        for _ in range(n - 1):
            report.note("duplicated", f"partition={pos[0]} offset={pos[1]}")
        if len(sides[pos]) > 1:
            report.note("overlap", f"partition={pos[0]} offset={pos[1]}")


def read_archive(job: JobSpec) -> list[dict[str, Any]]:
    """Every archive row of the job (its ``[[history.archive]]`` files, read with pyarrow)."""
    import glob

    import pyarrow.dataset as ds

    kinds = {"parquet": "parquet", "csv": "csv", "jsonl": "json"}
    out: list[dict[str, Any]] = []
    for spec in job.history.archive:
        files = sorted(glob.glob(str(job.resolve(spec.glob))))
        if files:
            out += ds.dataset(files, format=kinds[spec.format]).to_table().to_pylist()
    return out


def _ms(value: Any) -> Any:
    """Version values comparable across JSON (epoch ms) and Arrow (datetime) sources."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return value


def _rank(version: Any, source: int, pos: Pos) -> tuple[Any, ...]:
    missing = version is None
    return (not missing, _ms(version) if not missing else 0, source, pos)


def _merge(report: OracleReport, rows: list[dict[str, Any]], good: Mapping[Pos, dict[str, Any]],
           archive: list[dict[str, Any]], key: str, version: str | None,
           tomb: tuple[str, Any] | None = None) -> None:
    def ver(doc: Mapping[str, Any]) -> Any:
        return doc.get(version) if version else None

    def dead(doc: Mapping[str, Any]) -> bool:
        return tomb is not None and doc.get(tomb[0]) == tomb[1]

    newest: dict[Any, tuple[tuple[Any, ...], Pos | None, Any]] = {}
    deleted: dict[Any, bool] = {}
    versions: list[tuple[dict[str, Any], int, Pos, Pos | None]]
    versions = [(doc, 0, (-1, -1), None) for doc in archive]
    versions += [(doc, 1, pos, pos) for pos, doc in good.items()]
    for doc, source, order_pos, pos in versions:
        rank = _rank(ver(doc), source, order_pos)
        k = doc[key]
        report.tombstones += dead(doc)
        if k not in newest or rank > newest[k][0]:
            newest[k] = (rank, pos, _ms(ver(doc)))
            deleted[k] = dead(doc)
    by_key: dict[Any, list[tuple[Pos | None, Any]]] = {}
    for r in rows:
        at = r.get("_kafka_offset")
        pos = (r["_kafka_partition"], at) if at is not None else None
        by_key.setdefault(r[key], []).append((pos, _ms(ver(r))))
    marked = {r[key] for r in rows if r.get("_seamline_deleted")}
    for k, (_, want, want_ver) in sorted(newest.items(), key=lambda kv: str(kv[0])):
        got = by_key.get(k, [])
        if not got:
            report.note("lost", f"{key}={k}")
        for _ in range(len(got) - 1):
            report.note("key_duplicates", f"{key}={k}")
        if got and (want, want_ver) not in got:
            report.note("stale", f"{key}={k} expected {want or 'archive'} "
                                 f"version={want_ver}, found {got}")
        report.deleted_keys += deleted[k]
        if got and deleted[k] and k not in marked:
            report.note("resurrected", f"{key}={k}: newest version is a tombstone, found a "
                                       f"visible row {got}")
        if got and not deleted[k] and k in marked:
            report.note("wrongly_deleted", f"{key}={k}: newest version is no tombstone, found "
                                           f"a marker row {got}")
