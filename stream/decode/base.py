"""What every decoder shares: the raw message, the quarantined record, the lineage columns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pyarrow as pa

from coordinator.core import lineage
from coordinator.core.jobspec import KAFKA_SOURCE_KEY
from coordinator.core.values import Side, SourceTag
from stream.decode.kafka_meta import carry_all


class RawMessage(NamedTuple):
    """The parts of a Kafka message seamline uses (a named tuple: a slice reader makes one
    per record, and a frozen dataclass cost four times as much to build)."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int | None = None
    headers: tuple[tuple[str, str | bytes | None], ...] | None = None


@dataclass(frozen=True)
class Quarantined:
    """A record that could not become a row, kept with where it came from."""

    partition: int
    offset: int
    error: str
    raw: bytes | None


def add_lineage(
    table: pa.Table,
    partitions: pa.Array | None,
    offsets: pa.Array | None,
    source: SourceTag,
    side: Side,
) -> pa.Table:
    """Append the lineage columns (``None`` partitions/offsets mean archive rows: nulls)."""
    n = table.num_rows
    part = partitions if partitions is not None else pa.nulls(n, pa.int32())
    offs = offsets if offsets is not None else pa.nulls(n, pa.int64())
    cols = [
        part.cast(pa.int32()),
        offs.cast(pa.int64()),
        pa.repeat(pa.scalar(source, pa.string()), n),
        pa.repeat(pa.scalar(side, pa.string()), n),
    ]
    for f, col in zip(lineage.FIELDS, cols, strict=True):
        table = table.append_column(f, col)
    return table


class ColumnsDecoder:
    """Base of the decoders: :meth:`decode` of messages is :meth:`decode_columns` of their
    partitions, offsets and values (the live loop calls the latter on its column buffers)."""

    def decode(
        self,
        messages: Sequence[RawMessage],
        schema: pa.Schema,
        transform: Callable[[pa.Table], pa.Table],
        side: Side,
    ) -> tuple[pa.Table, list[Quarantined]]:
        """Decode, transform and add lineage to ``messages`` (see :meth:`decode_columns`)."""
        if any(KAFKA_SOURCE_KEY in (f.metadata or {}) for f in schema):
            values = carry_all((m.value, m.key, m.headers, m.timestamp_ms) for m in messages)
        else:
            values = [m.value for m in messages]
        return self.decode_columns(
            [m.partition for m in messages],
            [m.offset for m in messages],
            values,
            schema,
            transform,
            side,
        )

    def decode_columns(
        self,
        partitions: Sequence[int],
        offsets: Sequence[int],
        values: Sequence[bytes | None],
        schema: pa.Schema,
        transform: Callable[[pa.Table], pa.Table],
        side: Side,
    ) -> tuple[pa.Table, list[Quarantined]]:
        """Rows (as the transform returns them, plus lineage) and quarantined records."""
        raise NotImplementedError
