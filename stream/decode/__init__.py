"""Record decoding: raw Kafka records into Arrow rows with lineage, identically for live and history.

A decoder is a plugin: a module holding an object that satisfies :class:`RecordDecoder`,
registered in :data:`DECODERS` under the job's ``[stream] format``. A new format is one module
plus one line here; :func:`decoder_for` imports only the decoder a job uses.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import pyarrow as pa

from coordinator.core.errors import ConfigError
from coordinator.core.values import Side
from stream.decode.base import Quarantined, RawMessage
from stream.decode.transform import Transform

if TYPE_CHECKING:
    from coordinator.core.jobspec import JobSpec


class RecordDecoder(Protocol):
    """Decodes a batch of messages into rows for a schema, quarantining what does not decode.

    Both methods return the rows (user columns as ``transform`` returns them, plus the lineage
    columns) and the quarantined records, both in batch order. They never raise for a
    record's content: the same record yields the same row or the same quarantine reason,
    whatever batch it arrives in.
    """

    format: str

    def decode(
        self, messages: Sequence[RawMessage], schema: pa.Schema, transform: Transform, side: Side
    ) -> tuple[pa.Table, list[Quarantined]]: ...

    def decode_columns(
        self,
        partitions: Sequence[int],
        offsets: Sequence[int],
        values: Sequence[bytes | None],
        schema: pa.Schema,
        transform: Transform,
        side: Side,
    ) -> tuple[pa.Table, list[Quarantined]]: ...


#: ``[stream] format`` -> ``module:attribute`` of its decoder, or of a function building it
#: from the job (a format with settings of its own, like Avro's schema source).
DECODERS: dict[str, str] = {
    "json": "stream.decode.json:DECODER",
    "avro": "stream.decode.avro:decoder_for_job",
}


def decoder_for(format_: str, job: JobSpec | None = None) -> RecordDecoder:
    """The decoder registered for ``format_`` (built from ``job`` where the format needs it;
    wrapped in :class:`~stream.decode.tombstones.NullValueTombstones` when the job declares
    ``delete_when = { null_value = true }``).

    ``ConfigError`` naming the known formats for an unknown one.
    """
    ref = DECODERS.get(format_)
    if ref is None:
        close = difflib.get_close_matches(format_, list(DECODERS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of {sorted(DECODERS)}"
        raise ConfigError(
            f"key=stream.format: expected one of {sorted(DECODERS)}, found {format_!r}", hint=hint
        )
    module_name, _, attr = ref.partition(":")
    found = getattr(importlib.import_module(module_name), attr)
    decoder: RecordDecoder
    if hasattr(found, "format"):
        decoder = found
    elif job is None:
        raise ConfigError(f"key=stream.format: format {format_!r} needs the job's settings")
    else:
        decoder = found(job)
    marker = None if job is None else job.table.delete_when
    if marker is not None and marker.null_value:
        from stream.decode.tombstones import NullValueTombstones

        assert job is not None
        return NullValueTombstones(decoder, job.schema_.event_time)
    return decoder
