"""History from Kafka: a slice's offset ranges read (read committed) and decoded like live,
then filtered by the job's ``[history] where`` (the reconciler applies the same filter)."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa

from coordinator.core.controls import apply_where
from coordinator.core.jobspec import JobSpec
from coordinator.core.values import Slice
from stream.decode import decoder_for
from stream.decode.base import Quarantined
from stream.decode.transform import load_transform
from stream.kafka.reader import iter_kafka_range


def decode_kafka_slice(
    job: JobSpec, slice_: Slice, batch_size: int = 10_000
) -> Iterator[tuple[pa.Table, list[Quarantined]]]:
    """Decoded, transformed, filtered rows with lineage plus the quarantined records, per
    batch (rows the filter leaves out are neither rows nor quarantined)."""
    schema = job.schema_.arrow_schema()
    transform = load_transform(job.transform.function)
    conf = job.kafka_config()
    decoder = decoder_for(job.stream.format, job)
    where = job.history_filter(kafka=True)
    for rng in slice_.scope.ranges:
        for msgs in iter_kafka_range(conf, job.stream.topic, rng, batch_size):
            rows, bad = decoder.decode(msgs, schema, transform, side="backfill")
            yield apply_where(rows, where), bad
