"""Pure bookkeeping of the live consumer: batches tile the offsets exactly once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.core.values import Offset, OffsetRange, PartitionId
from stream.decode.base import RawMessage
from stream.live.core import (
    Batch,
    BatchLimits,
    LiveBook,
    stale_partitions,
    start_positions,
    strictly_increasing,
)


def _msg(p: int, o: int) -> RawMessage:
    return RawMessage(p, o, b"{}")


def _p(p: int) -> PartitionId:
    return PartitionId(p)


def _o(o: int) -> Offset:
    return Offset(o)


def test_start_positions_prefer_table_then_cut() -> None:
    got = start_positions([0, 1], {_p(0): _o(50)}, {_p(0): _o(10), _p(1): _o(7)})
    assert got == {0: 50, 1: 7}


def test_start_positions_unknown_partition_names_it() -> None:
    with pytest.raises(KeyError, match="partition=2"):
        start_positions([2], {}, {_p(0): _o(1)})


def test_stale_when_range_does_not_start_at_table_offset() -> None:
    ranges = [OffsetRange(_p(0), _o(10), _o(20)), OffsetRange(_p(1), _o(5), _o(6))]
    assert stale_partitions(ranges, {_p(0): _o(10), _p(1): _o(6)}, {}) == {1: 6}
    assert stale_partitions(ranges, {_p(0): _o(10)}, {_p(1): _o(5)}) == {}
    assert stale_partitions(ranges, {_p(0): _o(10)}, {_p(1): _o(3)}) == {1: 3}


def test_batch_ranges_start_at_position_even_when_offsets_are_sparse() -> None:
    book = LiveBook()
    book.assign({_p(0): _o(100)})
    for o in (102, 103, 107):
        assert book.add(_msg(0, o), now=0.0)
    assert not book.add(_msg(0, 99), now=0.0)  # below the position: already in the table
    assert not book.add(_msg(0, 103), now=0.0)  # duplicate delivery
    assert not book.add(_msg(1, 5), now=0.0)  # not owned
    assert book.ranges() == (OffsetRange(_p(0), _o(100), _o(108)),)
    book.committed(book.ranges(), now=1.0)
    assert book.positions == {0: 108} and book.size == 0


def test_due_respects_size_age_and_min_commit_interval() -> None:
    limits = BatchLimits(max_records=3, max_seconds=5.0, min_commit_seconds=1.0, hard_factor=2)
    book = LiveBook(last_commit=10.0)
    book.assign({_p(0): _o(0)})
    assert not book.due(limits, 10.5)
    for o in range(3):
        book.add(_msg(0, o), now=10.2)
    assert not book.due(limits, 10.5)  # full, but inside the minimum commit interval
    assert book.due(limits, 11.0)
    for o in range(3, 6):
        book.add(_msg(0, o), now=10.6)
    assert book.due(limits, 10.7)  # hard bound overrides the interval
    book2 = LiveBook()
    book2.assign({_p(0): _o(0)})
    book2.add(_msg(0, 0), now=0.0)
    assert not book2.due(limits, 4.9) and book2.due(limits, 5.0)


def test_a_slow_commit_paces_the_next_one_by_the_commit_share_and_the_batch_grows() -> None:
    limits = BatchLimits(max_records=2, max_seconds=5.0, min_commit_seconds=1.0,
                         hard_factor=100, max_commit_share=0.5)  # fmt: skip
    book = LiveBook()
    book.assign({_p(0): _o(0)})
    for o in range(2):
        book.add(_msg(0, o), now=0.0)
    batch = book.take(now=10.0)
    book.add(_msg(0, 2), now=10.5)
    book.add(_msg(0, 3), now=10.5)
    book.settle(batch.ranges, {}, now=14.0)  # a 4 s commit (a copy-on-write merge)
    assert book.commit_seconds == 4.0
    assert not book.due(limits, 17.9)  # full, but 4 s / 0.5 = 8 s after the last one started
    book.add(_msg(0, 4), now=17.0)
    assert book.due(limits, 18.0) and book.size == 3  # the paced batch grew meanwhile
    fast = book.take(now=18.0)
    book.add(_msg(0, 5), now=18.1)
    book.add(_msg(0, 6), now=18.1)
    book.settle(fast.ranges, {}, now=18.05)  # a 50 ms append: min_commit_seconds decides
    assert not book.due(limits, 18.9) and book.due(limits, 19.0)


def test_the_hard_bound_flushes_even_inside_a_paced_gap_and_bad_shares_are_refused() -> None:
    limits = BatchLimits(max_records=1, max_seconds=5.0, hard_factor=2, max_commit_share=0.25)
    book = LiveBook()
    book.assign({_p(0): _o(0)})
    book.add(_msg(0, 0), now=0.0)
    batch = book.take(now=1.0)
    book.settle(batch.ranges, {}, now=3.0)  # 2 s at a quarter share: next at 1 + 8 = 9 s
    book.add(_msg(0, 1), now=3.0)
    assert not book.due(limits, 8.9) and book.due(limits, 9.0)
    book.add(_msg(0, 2), now=3.0)
    assert book.due(limits, 3.1)  # memory bound: two records is the hard limit
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="max_commit_share"):
            BatchLimits(max_records=1, max_seconds=1.0, max_commit_share=share)


def test_revoke_and_reseek_discard_buffered_records() -> None:
    book = LiveBook()
    book.assign({_p(0): _o(0), _p(1): _o(0)})
    for o in range(4):
        book.add(_msg(0, o), 0.0)
        book.add(_msg(1, o), 0.0)
    assert book.revoke([1]) == 4
    assert book.reseek({_p(0): _o(2)}) == 4
    assert book.positions == {0: 2} and book.size == 0 and book.batch_started is None


@st.composite
def _runs(draw: st.DrawFn) -> tuple[dict[int, list[int]], list[tuple[str, int]]]:
    """Sparse offsets per partition and a schedule of (action, count) steps."""
    offsets = {
        p: sorted(draw(st.sets(st.integers(0, 200), min_size=1, max_size=40))) for p in range(3)
    }
    steps = draw(
        st.lists(
            st.tuples(st.sampled_from(["read", "commit", "crash"]), st.integers(1, 15)), max_size=30
        )
    )
    return offsets, steps


@settings(max_examples=200, deadline=None)
@given(_runs())
def test_commits_tile_offsets_exactly_once_across_crashes(
    run: tuple[dict[int, list[int]], list[tuple[str, int]]],
) -> None:
    offsets, steps = run
    table: dict[PartitionId, Offset] = {}
    committed_records: list[tuple[int, int]] = []
    fallback = {_p(p): _o(0) for p in offsets}
    book = LiveBook()
    book.assign(start_positions(offsets, table, fallback))
    cursor = {p: 0 for p in offsets}
    for action, n in [*steps, ("commit", 0)]:
        if action == "read":
            for p, offs in offsets.items():
                for o in offs[cursor[p] : cursor[p] + n]:
                    book.add(_msg(p, o), 0.0)
                cursor[p] = min(len(offs), cursor[p] + n)
        elif action == "commit" and book.size:
            ranges = book.ranges()
            assert not stale_partitions(ranges, table, fallback)
            committed_records += [(m.partition, m.offset) for m in book.messages()]
            table.update({r.partition: r.end for r in ranges})
            book.committed(ranges, 0.0)
        elif action == "crash":
            book = LiveBook()
            book.assign(start_positions(offsets, table, fallback))
            cursor = {
                p: sum(1 for o in offs if o < book.positions[_p(p)]) for p, offs in offsets.items()
            }
    assert len(committed_records) == len(set(committed_records))
    expected = {(p, o) for p, offs in offsets.items() for o in offs[: cursor[p]]}
    assert set(committed_records) == expected


def test_take_moves_the_batch_out_and_the_next_one_follows_it() -> None:
    book = LiveBook()
    book.assign({_p(0): _o(10), _p(1): _o(0)})
    book.add_many(0, [10, 11, 12], [b"a", b"b", b"c"], now=1.0)
    book.add_many(1, [4], [b"d"], now=1.0)
    batch = book.take(now=2.0)
    assert batch.ranges == (OffsetRange(_p(0), _o(10), _o(13)), OffsetRange(_p(1), _o(0), _o(5)))
    assert batch.columns() == ([0, 0, 0, 1], [10, 11, 12, 4], [b"a", b"b", b"c", b"d"])
    assert batch.columns(without=[_p(0)]) == ([1], [4], [b"d"])
    assert book.size == 0 and book.last_commit == 2.0
    assert book.add_many(0, [12, 13], [b"c", b"e"], now=2.5) == 1  # 12 is in flight already
    with pytest.raises(ValueError, match="in flight"):
        book.take(now=3.0)
    assert book.ranges() == (OffsetRange(_p(0), _o(13), _o(14)),)
    assert book.settle(batch.ranges, {}) == {}
    assert book.positions == {0: 13, 1: 5} and book.size == 1


def test_settle_reseeks_partitions_the_table_did_not_take() -> None:
    book = LiveBook()
    book.assign({_p(0): _o(0), _p(1): _o(0)})
    book.add_many(0, [0, 1], [b"a", b"b"], now=0.0)
    book.add_many(1, [0, 1], [b"a", b"b"], now=0.0)
    batch = book.take(now=0.0)
    book.add_many(0, [2], [b"c"], now=0.0)
    book.add_many(1, [2], [b"c"], now=0.0)
    seek = book.settle([r for r in batch.ranges if r.partition == 0], {_p(1): _o(7)})
    assert seek == {1: 7}  # partition 1: another consumer committed up to 7
    assert book.positions == {0: 2, 1: 7} and book.ranges() == (OffsetRange(_p(0), _o(2), _o(3)),)
    batch = book.take(now=0.0)
    assert book.settle((), {}) == {0: 2}  # failed outright: re-read from the position


@st.composite
def _pipelined(draw: st.DrawFn) -> tuple[dict[int, list[int]], list[tuple[str, int]]]:
    offsets = {
        p: sorted(draw(st.sets(st.integers(0, 200), min_size=1, max_size=40))) for p in range(3)
    }
    actions = ["read", "take", "land", "refuse", "steal", "crash"]
    steps = draw(st.lists(st.tuples(st.sampled_from(actions), st.integers(1, 15)), max_size=40))
    return offsets, steps


class _Pipeline:
    """A consumer with one commit in flight against a table another writer may race."""

    def __init__(self, offsets: dict[int, list[int]]) -> None:
        self.offsets = offsets
        self.table: dict[PartitionId, Offset] = {}
        self.fallback = {_p(p): _o(0) for p in offsets}
        self.written: list[tuple[int, int]] = []
        self.inflight: Batch | None = None
        self.crash()

    def crash(self) -> None:
        self.book = LiveBook()
        self.book.assign(start_positions(self.offsets, self.table, self.fallback))
        self.inflight = None
        self.cursor = {p: self._index(p, self.book.positions[_p(p)]) for p in self.offsets}

    def _index(self, p: int, offset: int) -> int:
        return sum(1 for o in self.offsets[p] if o < offset)

    def read(self, n: int) -> None:
        for p, offs in self.offsets.items():
            chunk = offs[self.cursor[p] : self.cursor[p] + n]
            self.book.add_many(p, chunk, [b"{}"] * len(chunk), 0.0)
            self.cursor[p] += len(chunk)

    def take(self) -> None:
        if self.inflight is None and self.book.size:
            self.inflight = self.book.take(0.0)

    def land(self) -> None:
        """What the commit thread does (stale check, conditional append), then settle."""
        if self.inflight is None:
            return
        stale = stale_partitions(self.inflight.ranges, self.table, self.fallback)
        good = [r for r in self.inflight.ranges if r.partition not in stale]
        for p, offs, _ in self.inflight.records:
            if p not in stale:
                self.written += [(p, o) for o in offs]
        self.table.update({r.partition: r.end for r in good})
        self._settled(self.book.settle(good, stale))

    def refuse(self) -> None:
        if self.inflight is not None:
            self._settled(self.book.settle((), {}))

    def _settled(self, seek: dict[PartitionId, Offset]) -> None:
        self.inflight = None
        for p, off in seek.items():
            self.cursor[p] = self._index(p, off)

    def steal(self, n: int) -> None:
        """Another consumer commits the next ``n`` records of one partition."""
        p = n % len(self.offsets)
        start = self.table.get(_p(p), _o(0))
        taken = [o for o in self.offsets[p] if o >= start][:n]
        if taken:
            self.written += [(p, o) for o in taken]
            self.table[_p(p)] = _o(taken[-1] + 1)


@settings(max_examples=300, deadline=None)
@given(_pipelined())
def test_pipelined_commits_tile_offsets_exactly_once(
    run: tuple[dict[int, list[int]], list[tuple[str, int]]],
) -> None:
    offsets, steps = run
    pipe = _Pipeline(offsets)
    for action, n in steps:
        if action == "read":
            pipe.read(n)
        elif action == "steal":
            pipe.steal(n)
        else:
            getattr(pipe, action)()
    for _ in range(4):  # drain: settle the batch in flight, then commit what is buffered
        pipe.land()
        pipe.take()
        pipe.land()
    assert pipe.book.size == 0
    assert len(pipe.written) == len(set(pipe.written)), "a record was written twice"
    expected = {(p, o) for p, offs in offsets.items() for o in offs if o < pipe.table.get(_p(p), 0)}
    assert set(pipe.written) == expected, "a record was lost"
    for p, offs in offsets.items():  # everything read is in the table
        assert pipe.table.get(_p(p), 0) >= (offs[pipe.cursor[p] - 1] + 1 if pipe.cursor[p] else 0)


@given(st.lists(st.integers(0, 50), max_size=200))
def test_strictly_increasing_matches_the_definition(offsets: list[int]) -> None:
    expected = all(offsets[i] < offsets[i + 1] for i in range(len(offsets) - 1))
    assert strictly_increasing(offsets) == expected
    assert strictly_increasing(sorted(set(offsets)))
