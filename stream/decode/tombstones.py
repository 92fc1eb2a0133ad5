"""Null-value tombstones: Kafka's compaction idiom as merge-mode marker rows.

With ``[table] delete_when = { null_value = true }`` a message with a key and a null value
(no payload) deletes its key. :class:`NullValueTombstones` wraps the job's value decoder (any
format): messages with a value decode exactly as before; a null-value message becomes a row
of the schema whose ``[schema.kafka]`` columns (the key, headers, timestamp) come from the
message, whose event-time column is the record's Kafka timestamp (when it is not itself a
Kafka column) and whose other columns are null. That row goes through the user transform
like any other (a transform must accept null values) and gets the lineage columns. Every row
the wrapper returns carries ``_seamline_deleted`` (true on a tombstone), the marker the
writers and the reconciler read (:meth:`coordinator.core.jobspec.DeleteWhenSpec.marker`), so
merge order and resurrection rules are those of a declared marker.

A null value without a key, or whose key or timestamp does not convert, is quarantined like
a bad value. Without the declaration a null value is quarantined (``tombstone (null value)``):
the wrapper is only used for jobs that declare it (:func:`stream.decode.decoder_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from coordinator.core import lineage
from coordinator.core.values import Side
from stream.decode.base import Quarantined, RawMessage, add_lineage
from stream.decode.coerce import RecordError, field_coercer, physical
from stream.decode.kafka_meta import KafkaValue, NullValue, attach, carry_all, value_schema
from stream.decode.transform import Transform, apply_transform

if TYPE_CHECKING:
    from stream.decode import RecordDecoder


class NullValueTombstones:
    """The job's decoder, with null-value messages decoded as their keys' tombstones."""

    def __init__(self, inner: RecordDecoder, event_time: str) -> None:
        self.inner = inner
        self.event_time = event_time
        self.format = inner.format

    def decode(
        self, messages: Sequence[RawMessage], schema: pa.Schema, transform: Transform, side: Side
    ) -> tuple[pa.Table, list[Quarantined]]:
        """Decode ``messages`` (null values keep their key, headers and timestamp)."""
        values = carry_all(
            ((m.value, m.key, m.headers, m.timestamp_ms) for m in messages), nulls=True
        )
        return self.decode_columns(
            [m.partition for m in messages], [m.offset for m in messages], values, schema,
            transform, side,
        )  # fmt: skip

    def decode_columns(
        self,
        partitions: Sequence[int],
        offsets: Sequence[int],
        values: Sequence[bytes | None],
        schema: pa.Schema,
        transform: Transform,
        side: Side,
    ) -> tuple[pa.Table, list[Quarantined]]:
        """Rows (with lineage and ``_seamline_deleted``) and quarantined records, in batch
        order; the inner decoder decodes the records that hold a value."""
        dead = [i for i, v in enumerate(values) if v is None or type(v) is NullValue]
        if not dead:
            rows, bad = self.inner.decode_columns(
                partitions, offsets, values, schema, transform, side
            )
            return _flag(rows, False), bad
        gone = set(dead)
        alive = [i for i in range(len(values)) if i not in gone]
        parts = []
        if alive:
            rows, bad = self.inner.decode_columns(
                [partitions[i] for i in alive], [offsets[i] for i in alive],
                [values[i] for i in alive], schema, transform, side,
            )  # fmt: skip
            parts.append((_flag(rows, False), alive, bad))
        tombs, tbad = self._tombstones(
            [partitions[i] for i in dead], [offsets[i] for i in dead], [values[i] for i in dead],
            schema, transform, side,
        )  # fmt: skip
        parts.append((_flag(tombs, True), dead, tbad))
        return _batch_order(parts, partitions, offsets)

    def _tombstones(
        self,
        partitions: list[int],
        offsets: list[int],
        values: list[bytes | None],
        schema: pa.Schema,
        transform: Transform,
        side: Side,
    ) -> tuple[pa.Table, list[Quarantined]]:
        """The tombstone rows of null-value messages (transformed, with lineage)."""
        bad: dict[int, str] = {}
        keyed: list[int] = []
        for j, v in enumerate(values):
            if not isinstance(v, KafkaValue) or v.meta[0] is None:
                bad[j] = "decode: null value without a message key (no key to delete)"
            else:
                keyed.append(j)
        table, keyed = self._value_columns(values, keyed, value_schema(schema), bad)
        table, order, bad = attach(table, keyed, bad, values, schema)
        out, kept_rows, failed = apply_transform(table, transform)
        order = list(range(len(values))) if order is None else order
        kept = order if kept_rows is None else [order[i] for i in kept_rows]
        bad.update({order[i]: reason for i, reason in failed.items()})
        take = pa.array(kept, pa.int64())
        rows = add_lineage(
            out,
            pa.array(partitions, pa.int32()).take(take),
            pa.array(offsets, pa.int64()).take(take),
            "kafka",
            side,
        )
        quarantined = [Quarantined(partitions[j], offsets[j], bad[j], None) for j in sorted(bad)]
        return rows, quarantined

    def _value_columns(
        self, values: list[bytes | None], keyed: list[int], schema: pa.Schema, bad: dict[int, str]
    ) -> tuple[pa.Table, list[int]]:
        """The value columns of the tombstones at ``keyed``: null, but the event time (the
        Kafka timestamp); a record whose timestamp does not convert joins ``bad``."""
        stamps: list[Any] = []
        if self.event_time in schema.names:
            f = schema.field(self.event_time)
            check = field_coercer(f)
            for j in list(keyed):
                carrier = values[j]
                assert isinstance(carrier, KafkaValue)  # keyed: it carries its metadata
                stamp = carrier.meta[2]
                try:
                    if stamp is None:
                        raise RecordError("the message has no timestamp")
                    stamps.append(check(stamp, f.type))
                except RecordError as exc:
                    bad[j] = f"decode: field {f.name!r} (the tombstone's Kafka timestamp): {exc}"
                    keyed.remove(j)
        columns = []
        for f in schema:
            if f.name == self.event_time:
                arr = pa.array(stamps, physical(f.type))
                columns.append(arr.cast(f.type) if pa.types.is_timestamp(f.type) else arr)
            else:
                columns.append(pa.nulls(len(keyed), f.type))
        return pa.Table.from_arrays(columns, schema=schema), keyed


def _flag(rows: pa.Table, deleted: bool) -> pa.Table:
    """``rows`` with ``_seamline_deleted`` set to ``deleted``."""
    return rows.append_column(
        lineage.DELETED_FIELD, pa.array([deleted] * rows.num_rows, pa.bool_())
    )


def _batch_order(
    parts: list[tuple[pa.Table, list[int], list[Quarantined]]],
    partitions: Sequence[int],
    offsets: Sequence[int],
) -> tuple[pa.Table, list[Quarantined]]:
    """The rows and quarantined records of ``parts`` (each decoded from the batch positions
    given, in order), each in batch order. A decoder returns a row for every record it did not
    quarantine, in order, so a part's rows come from its positions less the quarantined ones."""
    at: list[npt.NDArray[np.int64]] = []
    bad: list[tuple[int, Quarantined]] = []
    for _, positions, quarantined in parts:
        gone = {(q.partition, q.offset) for q in quarantined}
        by_record = {(partitions[i], offsets[i]): i for i in positions} if gone else {}
        bad += [(by_record[(q.partition, q.offset)], q) for q in quarantined]
        kept = [i for i in positions if (partitions[i], offsets[i]) not in gone] if gone else positions
        at.append(np.asarray(kept, np.int64))
    rows = pa.concat_tables([t for t, _, _ in parts], promote_options="permissive")
    order = np.argsort(np.concatenate(at), kind="stable")
    return rows.take(pa.array(order)), [q for _, q in sorted(bad, key=lambda b: b[0])]


def carries_null_values(decoder: object) -> bool:
    """Whether ``decoder`` needs null-value messages with their metadata (:class:`NullValue`)."""
    return isinstance(decoder, NullValueTombstones)
