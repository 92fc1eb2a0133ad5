"""Order-independent row checksums over a canonical encoding (scheme ``seamline-row-v1``).

A table's checksum is ``(rows, sum, xor)``: the row count plus the wrapping 64-bit sum and the
xor of one 64-bit hash per row. Both aggregates are commutative, so the checksum does not
depend on row order, batch boundaries or file layout, and two checksums of disjoint row sets
combine by adding counts and sums and xoring the xors.

Canonical encoding (version 1). Every step is vectorised numpy over Arrow buffers, and the
hash is self-implemented (splitmix64 finaliser, fixed constants), so it is stable across
processes, machines and library versions by construction.

* **Columns**: every column except ``_seamline_side`` (which side wrote a row is lineage for
  overlap detection, not content), taken in order of name (Unicode code points). Each column
  has a seed ``s = fnv1a64(utf8(name))``, so a value moved to another column changes the hash.
* **Nulls**: a null is its own tag, never a value: its token is ``mix(mix(s) ^ NULL_TAG)``
  while a value's token is ``mix(payload ^ s)``. (Tokens are 64-bit, so a null and a value
  can only meet by a 64-bit hash collision, like any two distinct values.)
* **Integers and booleans** (any width, signed or not): the integer, two's complement 64-bit.
* **Floats** (16/32/64-bit): widened to float64; ``-0.0`` becomes ``0.0``; every NaN becomes
  the canonical quiet NaN ``0x7ff8000000000000``; payload is the IEEE-754 bit pattern.
* **Timestamps**: the instant in UTC microseconds since the epoch, whatever the unit or the
  zone (Arrow stores zoned timestamps as UTC instants; naive ones are read as UTC). Seconds
  and milliseconds are scaled up; nanoseconds are floor-divided (Iceberg keeps microseconds).
  Dates are days since the epoch; times and durations are microseconds.
* **Decimals**: the unscaled 128-bit integer at the column's scale (two 64-bit words) mixed
  with the scale: ``payload = mix(hi ^ scale * K) ^ lo``.
* **Strings and binary**: UTF-8 bytes, length-prefixed: ``h = Σ T[b_i] * P^i (mod 2^64)``
  over the bytes, then ``payload = h ^ mix(len ^ LEN_SALT)``. ``T`` is a fixed table of 256
  words whose low byte is the byte value and ``P`` is odd with ``P + 1 ≡ 4 (mod 8)``, so any
  single changed byte and any swap of two bytes change ``h`` (no factor of ``2^64`` can form).
* **Row**: ``row = mix(Σ_columns token)``. Any single changed value changes exactly one token
  and ``mix`` is a bijection, so it changes the row hash, hence the sum (only that row moved).

* **Nested values** (an extension of v1: flat columns hash exactly as before, and v1 refused
  nested columns, so no earlier checksum changes). Inside a nested value every item, field,
  key and value gets a token like a column does (``mix(payload ^ seed)``, or the null token
  of its seed), with seed ``fnv1a64`` of the struct field's name, or of ``item`` (list items),
  ``key`` / ``value`` (map entries). A **struct** is ``mix(Σ field tokens ^ STRUCT_SALT)``
  (fields by name, so their order does not matter). A **list** is position-sensitive:
  ``mix(Σ token_i * P^i ^ LIST_SALT) ^ mix(len ^ LEN_SALT)``. A **map** is order-free (a JSON
  object has no order): each entry is ``mix(key token ^ mix(value token ^ K))`` and the map is
  ``mix(Σ entries ^ MAP_SALT) ^ mix(len ^ LEN_SALT)``. Large and fixed-size lists hash like
  lists, so a table that reads a list back as ``large_list`` matches its source.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from coordinator.core import lineage
from coordinator.core.errors import ReconcileError

log = logging.getLogger(__name__)

SCHEME: Final = "seamline-row-v1"
EXCLUDED: Final = frozenset({lineage.SIDE})

U64 = npt.NDArray[np.uint64]
_MASK: Final = (1 << 64) - 1
_M1: Final = np.uint64(0xBF58476D1CE4E5B9)
_M2: Final = np.uint64(0x94D049BB133111EB)
_NULL_TAG: Final = 0x6E756C6C5F746167
_LEN_SALT: Final = 0x6C656E5F73616C74
_DEC_K: Final = 0x9E3779B97F4A7C15
_P: Final = 0x100000001B3 * 8 + 3  # odd, P + 1 ≡ 4 (mod 8)
_CANON_NAN: Final = np.uint64(0x7FF8000000000000)
_STRUCT_SALT: Final = 0x7374727563745F73
_LIST_SALT: Final = 0x6C6973745F73616C
_MAP_SALT: Final = 0x6D61705F73616C74


def mix_int(z: int) -> int:
    """splitmix64 finaliser on a Python int (reference for :func:`mix`)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def mix(z: U64) -> U64:
    """splitmix64 finaliser, vectorised (a bijection on 64-bit words). Returns a new array."""
    z = z ^ (z >> np.uint64(30))
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64-bit of ``data`` (column-name seeds)."""
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & _MASK
    return h


_BYTE_TABLE: Final = np.array(
    [(mix_int(i + 0x5EED) & ~0xFF) | i for i in range(256)], dtype=np.uint64
)
_powers: U64 = np.ones(1, dtype=np.uint64)


def _pow_table(n: int) -> U64:
    """``P^0 .. P^(n-1)`` mod 2^64, grown on demand and cached."""
    global _powers
    if len(_powers) < n:
        size = max(n, 2 * len(_powers))
        out = [1] * size
        for i in range(1, size):
            out[i] = (out[i - 1] * _P) & _MASK
        _powers = np.array(out, dtype=np.uint64)
    return _powers[:n]


@dataclass(frozen=True)
class Checksum:
    """Row count plus order-independent 64-bit aggregates of the row hashes."""

    rows: int = 0
    sum: int = 0
    xor: int = 0
    scheme: str = SCHEME

    def __add__(self, other: Checksum) -> Checksum:
        if other.scheme != self.scheme:
            raise ReconcileError(
                f"cannot combine checksums: expected scheme={self.scheme}, found {other.scheme}"
            )
        return Checksum(
            self.rows + other.rows, (self.sum + other.sum) & _MASK, self.xor ^ other.xor
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form (64-bit words as 16-digit hex: JSON numbers lose bits above 2^53)."""
        return {
            "scheme": self.scheme,
            "rows": self.rows,
            "sum": f"{self.sum:016x}",
            "xor": f"{self.xor:016x}",
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Checksum:
        """Inverse of :meth:`to_json`."""
        return cls(int(doc["rows"]), int(doc["sum"], 16), int(doc["xor"], 16), doc["scheme"])

    @classmethod
    def of_hashes(cls, hashes: U64) -> Checksum:
        """Checksum of precomputed row hashes."""
        if len(hashes) == 0:
            return cls()
        total = int(np.add.reduce(hashes, dtype=np.uint64))
        return cls(len(hashes), total, int(np.bitwise_xor.reduce(hashes)))


def _validity(arr: pa.Array) -> npt.NDArray[np.bool_] | None:
    if arr.null_count == 0:
        return None
    return np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_)


def _int_payload(arr: pa.Array) -> U64:
    filled = pc.fill_null(arr.cast(pa.int64()), 0) if arr.null_count else arr.cast(pa.int64())
    return np.asarray(filled.to_numpy(zero_copy_only=False)).view(np.uint64)


def _float_payload(arr: pa.Array) -> U64:
    filled = pc.fill_null(arr, 0.0) if arr.null_count else arr
    x = np.array(filled.to_numpy(zero_copy_only=False), dtype=np.float64)
    x[x == 0.0] = 0.0  # -0.0 == 0.0 is True: both become +0.0
    bits = x.view(np.uint64)
    bits[np.isnan(x)] = _CANON_NAN
    return bits


_TS_SCALE: Final = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 1}


def _temporal_payload(arr: pa.Array) -> U64:
    t = arr.type
    if pa.types.is_date32(t):
        return _int_payload(arr.cast(pa.int32()))
    if pa.types.is_date64(t):
        return _int_payload(pc.divide(arr.cast(pa.int64()), 86_400_000))
    unit = t.unit
    ints = arr.cast(pa.int64())
    if unit == "ns":
        ints = _exact_ns_floor(ints)
    elif _TS_SCALE[unit] != 1:
        ints = pc.multiply(ints, _TS_SCALE[unit])
    return _int_payload(ints)


def _exact_ns_floor(ns: pa.Array) -> pa.Array:
    values = np.asarray(pc.fill_null(ns, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    return pa.array(np.floor_divide(values, 1000), type=pa.int64())


def _decimal_payload(arr: pa.Array) -> U64:
    t = arr.type
    if not pa.types.is_decimal128(t):
        arr = arr.cast(pa.decimal128(t.precision if t.precision <= 38 else 38, t.scale))
    words = np.frombuffer(arr.buffers()[1], dtype=np.uint64)
    words = words[2 * arr.offset : 2 * (arr.offset + len(arr))].reshape(-1, 2)
    lo, hi = words[:, 0].copy(), words[:, 1].copy()
    salt = np.uint64((t.scale * _DEC_K) & _MASK)
    return mix(hi ^ salt) ^ lo


def _bytes_payload(arr: pa.Array) -> U64:
    arr = arr.cast(pa.large_binary())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data_buf = arr.buffers()[2]
    base, stop = int(offsets[0]), int(offsets[-1])
    lens = np.diff(offsets)
    h = np.zeros(n, dtype=np.uint64)
    if stop > base and data_buf is not None:
        data = np.frombuffer(data_buf, dtype=np.uint8)[base:stop]
        starts = offsets[:-1] - base
        pos = np.arange(stop - base, dtype=np.int64) - np.repeat(starts, lens)
        terms = _BYTE_TABLE[data] * _pow_table(int(lens.max()))[pos]
        prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
        h = prefix[offsets[1:] - base] - prefix[starts]
    return h ^ mix(lens.astype(np.uint64) ^ np.uint64(_LEN_SALT))


def _repeated_bytes_payload(arr: pa.Array) -> U64:
    """Hash each distinct value once when values repeat (a C++ hash pass is far cheaper
    than hashing every byte); the payloads are identical to :func:`_bytes_payload`."""
    if len(arr) < 1024:
        return _bytes_payload(arr)
    enc = pc.dictionary_encode(arr)
    if 2 * len(enc.dictionary) > len(arr):
        return _bytes_payload(arr)
    if len(enc.dictionary) == 0:
        return np.zeros(len(arr), dtype=np.uint64)
    indices = enc.indices
    indices = pc.fill_null(indices, 0) if indices.null_count else indices
    positions = np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.intp)
    payload: U64 = _bytes_payload(enc.dictionary)[positions]
    return payload


def _payload(arr: pa.Array, name: str) -> U64:
    t = arr.type
    if pa.types.is_dictionary(t):
        return _payload(arr.cast(t.value_type), name)
    if pa.types.is_boolean(t) or pa.types.is_integer(t):
        return _int_payload(arr)
    if pa.types.is_floating(t):
        return _float_payload(arr)
    if pa.types.is_temporal(t):
        return _temporal_payload(arr)
    if pa.types.is_decimal(t):
        return _decimal_payload(arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t):
        return _repeated_bytes_payload(arr)
    if pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return _repeated_bytes_payload(arr)
    if pa.types.is_null(t):
        return np.zeros(len(arr), dtype=np.uint64)
    if pa.types.is_struct(t):
        return _struct_payload(arr)
    if pa.types.is_map(t):
        return _map_payload(arr)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _list_payload(arr)
    raise ReconcileError(
        f"column={name}: expected a scalar type, found {t}",
        hint="checksum a flattened projection of nested columns",
    )


def _struct_payload(arr: pa.StructArray) -> U64:
    """Sum of the fields' tokens, each seeded by its field name (order of fields is free)."""
    acc = np.zeros(len(arr), dtype=np.uint64)
    for f, child in zip(arr.type, arr.flatten(), strict=True):
        acc += _tokens(child, f.name)
    return mix(acc ^ np.uint64(_STRUCT_SALT))


def _segments(arr: pa.Array) -> tuple[pa.Array, npt.NDArray[np.int64]]:
    """The items of a list or map array (null lists: none) and each row's item count."""
    lengths = pc.fill_null(pc.list_value_length(arr), 0)
    lens = np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64)
    return arr.flatten(), lens


def _ordered(tokens: U64, lens: npt.NDArray[np.int64]) -> U64:
    """Per row, ``Σ token_i * P^i`` over its items (position-sensitive), length-salted."""
    n = len(lens)
    h = np.zeros(n, dtype=np.uint64)
    if len(tokens):
        starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(lens)[:-1]])
        pos = np.arange(len(tokens), dtype=np.int64) - np.repeat(starts, lens)
        terms = tokens * _pow_table(int(lens.max()))[pos]
        prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
        h = prefix[starts + lens] - prefix[starts]
    return mix(h ^ np.uint64(_LIST_SALT)) ^ mix(lens.astype(np.uint64) ^ np.uint64(_LEN_SALT))


def _unordered(tokens: U64, lens: npt.NDArray[np.int64]) -> U64:
    """Per row, ``Σ token_i`` over its items (order-free), length-salted."""
    n = len(lens)
    h = np.zeros(n, dtype=np.uint64)
    if len(tokens):
        starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(lens)[:-1]])
        prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(tokens, dtype=np.uint64)])
        h = prefix[starts + lens] - prefix[starts]
    return mix(h ^ np.uint64(_MAP_SALT)) ^ mix(lens.astype(np.uint64) ^ np.uint64(_LEN_SALT))


def _list_payload(arr: pa.Array) -> U64:
    items, lens = _segments(arr)
    return _ordered(_tokens(items, "item"), lens)


def _map_payload(arr: pa.MapArray) -> U64:
    if arr.offset:
        arr = pa.concat_arrays([arr])  # unsliced: its offsets start the child arrays
    as_list = pa.ListArray.from_arrays(  # list<struct<key, value>>: same entries, same nulls
        arr.offsets,
        pa.StructArray.from_arrays([arr.keys, arr.items], ["key", "value"]),
        mask=arr.is_null() if arr.null_count else None,
    )
    entries, lens = _segments(as_list)
    keys, values = entries.flatten()
    entry = mix(_tokens(keys, "key") ^ mix(_tokens(values, "value") ^ np.uint64(_DEC_K)))
    return _unordered(entry, lens)


def _tokens(arr: pa.Array, name: str) -> U64:
    """Per-value 64-bit token (value or null) seeded by ``name`` (a column or nested field)."""
    seed = fnv1a64(name.encode("utf-8"))
    tokens = mix(_payload(arr, name) ^ np.uint64(seed))
    valid = _validity(arr)
    if valid is not None or pa.types.is_null(arr.type):
        null_token = np.uint64(mix_int(mix_int(seed) ^ _NULL_TAG))
        tokens = np.where(valid if valid is not None else False, tokens, null_token)
    return tokens


def column_tokens(arr: pa.Array | pa.ChunkedArray, name: str) -> U64:
    """Per-row 64-bit token of one column (value or null), seeded by the column name."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return _tokens(arr, name)


def hashed_columns(names: Iterable[str]) -> list[str]:
    """The columns the scheme hashes, in canonical order."""
    return sorted(n for n in names if n not in EXCLUDED)


def row_hashes(data: pa.Table | pa.RecordBatch, columns: Sequence[str] | None = None) -> U64:
    """One stable 64-bit hash per row of ``data`` over ``columns`` (default: all but side)."""
    names = hashed_columns(columns if columns is not None else data.schema.names)
    missing = [n for n in names if n not in data.schema.names]
    if missing:
        raise ReconcileError(
            f"expected columns {missing} in the data, found {data.schema.names}",
            hint="both sides must carry the same columns (check the transform)",
        )
    acc = np.zeros(data.num_rows, dtype=np.uint64)
    for name in names:
        acc += column_tokens(data.column(name), name)
    return mix(acc)


def checksum(data: pa.Table | pa.RecordBatch, columns: Sequence[str] | None = None) -> Checksum:
    """Checksum of ``data`` (see the module docstring for the encoding)."""
    return Checksum.of_hashes(row_hashes(data, columns))


class ChecksumAccumulator:
    """Streams batches into one checksum without keeping them (memory O(batch))."""

    def __init__(self, columns: Sequence[str] | None = None) -> None:
        self.columns = list(columns) if columns is not None else None
        self.value = Checksum()

    def update(self, data: pa.Table | pa.RecordBatch) -> None:
        """Add ``data`` to the running checksum."""
        if data.num_rows:
            self.value = self.value + checksum(data, self.columns)
