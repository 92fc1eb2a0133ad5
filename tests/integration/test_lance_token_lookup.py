"""Lance commit-token lookups that outlast the live consumer's version cleanup (issue 12 item 3).

A backfill commits slices, the live side appends and its maintenance removes old versions
(those holding the backfill tokens included); lookups and re-runs must still work, read only
versions that exist, and never write a second copy. Real Lance datasets, read back to check.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import lance
import pytest
from lance.dataset import Transaction

from backfill.sinks import open_sink
from backfill.sinks.common import MaintenancePolicy
from backfill.sinks.lance import tokens
from backfill.sinks.lance.sink import LanceSink
from coordinator.core import lineage
from coordinator.core.jobspec import JobSpec
from coordinator.core.ports import CommitRecord
from coordinator.core.values import CommitToken, Scope, SnapshotId
from tests.contract.backfill_writers import Rows, make_job, token

pytestmark = pytest.mark.integration

NO_AUTO = MaintenancePolicy(keep_versions=2, every_commits=0, min_age_s=0.0)


class CountingCache(tokens.TransactionCache):
    """Counts the transaction files actually read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def props(self, ds: lance.LanceDataset, version: int) -> dict[str, str]:
        before = dict(self._props)
        out = super().props(ds, version)
        self.reads += version not in before
        return out


def _sink(tmp_path: Path) -> LanceSink:
    job = make_job("lance-overwrite", tmp_path, "127.0.0.1:1", "tokens")
    schema = job.schema_.arrow_schema()
    sink = LanceSink(str(tmp_path / "orders.lance"), schema, "ts", maintenance=NO_AUTO)
    sink.ensure_table()
    return sink


def _backfill(sink: LanceSink, slice_id: str, rows: Rows, attempt: int = 1) -> CommitToken:
    tok = token(slice_id, rows.range, attempt=attempt)
    sink.write_slice(Scope("kafka", ranges=(rows.range,)), rows.table("backfill"), tok)
    return tok


def _live(sink: LanceSink, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        rows = Rows(base=10_000 + 10 * i, partition=0, start=10 * i, count=10)
        sink.append_live(rows.table("live"), token(f"live-{i}", rows.range, side="live"))


def _offsets(uri: str, storage_options: dict[str, str] | None = None) -> Counter[tuple[int, int]]:
    ds = lance.dataset(uri, storage_options=storage_options)
    data = ds.to_table(columns=[lineage.PARTITION, lineage.OFFSET])
    pairs = zip(data[lineage.PARTITION].to_pylist(), data[lineage.OFFSET].to_pylist(), strict=True)
    return Counter(pairs)


def test_lookups_and_reruns_survive_version_cleanup(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    k0, k1 = Rows(0, 5, 0, 10), Rows(100, 5, 10, 10)
    first = _backfill(sink, "k0", k0)
    _backfill(sink, "k1", k1)
    k0_version = lance.dataset(sink.uri).version - 1
    _live(sink, 12)
    assert sink.maintain() > 0
    oldest = min(int(r["version"]) for r in lance.dataset(sink.uri).version_refs())
    assert oldest > k0_version + 1  # the versions holding k0's and k1's tokens are gone

    fresh = _sink(tmp_path)  # a new process: nothing cached
    found = fresh.find_commit("contract", "k0")
    assert found is not None and found.token == first and found.snapshot_id == k0_version
    assert fresh.find_commit("contract", "k1") is not None
    assert fresh.find_commit("contract", "never") is None

    k2 = Rows(200, 5, 20, 10)
    _backfill(fresh, "k2", k2)  # a new slice after cleanup
    _backfill(fresh, "k0", k0, attempt=2)  # an already-committed slice re-run: idempotent
    _live(fresh, 2, start=12)
    assert fresh.maintain() > 0
    again = _sink(tmp_path)
    rerun = again.find_commit("contract", "k0")
    assert rerun is not None and rerun.token.attempt == 2
    assert {
        (r.token.slice_id, r.token.attempt) for r in again.commits() if r.token.side == "backfill"
    } == {
        ("k0", 2),
        ("k1", 1),
        ("k2", 1),
    }
    want = Counter({(5, o): 1 for o in range(30)}) + Counter({(0, o): 1 for o in range(140)})
    assert _offsets(sink.uri) == want
    assert again.live_offsets() == {0: 140}


def test_a_long_tail_is_folded_so_lookups_stay_short(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    _backfill(sink, "k0", Rows(0, 5, 0, 10))
    _live(sink, tokens.FOLD_AFTER + 6)  # no maintenance: a long tail of versions
    counting = CountingCache()
    sink._txns = counting
    assert sink.find_commit("contract", "missing") is None  # walks the tail once, then folds
    assert counting.reads >= tokens.FOLD_AFTER
    fresh = _sink(tmp_path)
    fresh._txns = counting = CountingCache()
    found = fresh.find_commit("contract", "k0")
    assert found is not None and found.token.slice_id == "k0"
    assert fresh.find_commit("contract", "missing") is None
    assert counting.reads <= 2  # only the versions above the folded checkpoint
    config = lance.dataset(sink.uri).config()
    assert tokens.checkpoint(config) >= tokens.FOLD_AFTER + 6
    assert fresh.live_offsets() == {0: 10 * (tokens.FOLD_AFTER + 6)}


def test_versions_removed_without_a_fold_are_skipped_not_read(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    _backfill(sink, "k0", Rows(0, 5, 0, 10))
    _live(sink, 6)
    _backfill(sink, "k1", Rows(100, 5, 10, 10))
    _live(sink, 2, start=6)
    ds = lance.dataset(sink.uri)
    gone = list(range(2, ds.version - 4))  # an outside cleanup: no token index was folded
    ds.cleanup_old_versions(versions=gone, error_if_tagged_old_versions=False)
    assert not {int(r["version"]) for r in lance.dataset(sink.uri).version_refs()} & set(gone)

    fresh = _sink(tmp_path)
    assert fresh.find_commit("contract", "k0") is None  # its only record was removed
    k1 = fresh.find_commit("contract", "k1")
    assert k1 is not None and k1.token.slice_id == "k1"
    _backfill(fresh, "k0", Rows(0, 5, 0, 10), attempt=2)  # the re-run replaces, never adds
    assert fresh.live_offsets() == {0: 80}
    want = Counter({(5, o): 1 for o in range(20)}) + Counter({(0, o): 1 for o in range(80)})
    assert _offsets(sink.uri) == want


def _cadence_job(tmp_path: Path, where: str, s3: object, every: int) -> JobSpec:
    base = make_job(f"lance-overwrite{where}", tmp_path, "127.0.0.1:1", "tokens", s3=s3)
    live = base.live.model_copy(update={"keep_snapshots": 2, "expire_snapshots_every": every})
    return base.model_copy(update={"live": live})


def _cadence_sink(job: JobSpec) -> LanceSink:
    sink = open_sink(job, min_age_s=0.0)
    assert isinstance(sink, LanceSink)
    sink.ensure_table()
    return sink


@pytest.mark.parametrize("where", ["", "@s3"])
def test_the_backfill_maintains_on_its_cadence_and_tokens_outlast_it(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    """Slices alone (no live consumer): every ``expire_snapshots_every`` versions the backfill
    compacts, folds the token index (beside the dataset, not in its config) and removes old
    versions; every slice's token is still found, the rows are exact, the config stays small."""
    s3 = request.getfixturevalue("s3_server") if where else None
    job = _cadence_job(tmp_path, where, s3, every=4)
    sink = _cadence_sink(job)
    slices = [Rows(100 * i, 3, 10 * i, 10) for i in range(14)]
    for i, rows in enumerate(slices):
        _backfill(sink, f"k{i}", rows)
    ds = lance.dataset(sink.uri, storage_options=sink.storage_options)
    versions = [int(r["version"]) for r in ds.version_refs()]
    assert len(versions) < ds.version - 5  # old versions were removed during the backfill
    assert len(ds.get_fragments()) < len(slices)  # small fragments were compacted
    assert tokens.checkpoint(ds.config()) > 1  # the index was folded
    assert not [k for k in ds.config() if k.startswith(tokens.LEGACY_INDEX_PREFIX)]
    assert ds.version - tokens.checkpoint(ds.config()) <= 4 + 2  # the tail stays short

    fresh = _cadence_sink(job)  # a new process: nothing cached
    for i, rows in enumerate(slices):
        found = fresh.find_commit("contract", f"k{i}")
        assert found is not None and found.token == token(f"k{i}", rows.range)
    assert fresh.find_commit("contract", "never") is None
    _backfill(fresh, "k0", slices[0], attempt=2)  # a re-run replaces its scope, never adds
    want = Counter({(3, o): 1 for o in range(10 * len(slices))})
    assert _offsets(sink.uri, sink.storage_options) == want


def test_an_index_kept_in_the_config_by_an_earlier_release_moves_beside_the_dataset(
    tmp_path: Path,
) -> None:
    sink = _sink(tmp_path)
    first = _backfill(sink, "k0", Rows(0, 5, 0, 10))
    ds = lance.dataset(sink.uri)
    at = tokens.committed_at(ds, ds.version)
    old: dict[str, str | None] = {  # the config index of earlier releases: one key per slice
        f"{tokens.LEGACY_INDEX_PREFIX}contract/k0": json.dumps(
            {"version": ds.version, "at": at.isoformat(), "token": first.to_properties()}
        ),
        tokens.TOKEN_CHECKPOINT_KEY: str(ds.version),
    }
    op = lance.LanceOperation.UpdateConfig(
        config_updates=lance.LanceOperation.UpdateMap(old, replace=False)
    )
    lance.LanceDataset.commit(sink.uri, Transaction(read_version=ds.version, operation=op),
                              read_version=ds.version)  # fmt: skip
    _live(sink, 3)
    ds = lance.dataset(sink.uri)
    ds.cleanup_old_versions(versions=list(range(1, ds.version - 3)),
                            error_if_tagged_old_versions=False)  # fmt: skip
    assert _sink(tmp_path).find_commit("contract", "k0") == CommitRecord(first, SnapshotId(2), at)

    assert sink.maintain() > 0  # folds: the legacy key moves to the index documents
    config = lance.dataset(sink.uri).config()
    assert not [k for k in config if k.startswith(tokens.LEGACY_INDEX_PREFIX)]
    found = _sink(tmp_path).find_commit("contract", "k0")
    assert found is not None and found.token == first and found.snapshot_id == 2
    assert (tmp_path / "orders.lance" / tokens.INDEX_DIR).is_dir()


def test_cleanup_removes_old_versions_only_and_keeps_every_young_one(tmp_path: Path) -> None:
    """Versions younger than the minimum age stay (readers may hold them); the older ones up
    to the checkpoint go, found without reading every version's manifest."""
    job = make_job("lance-overwrite", tmp_path, "127.0.0.1:1", "tokens")
    policy = MaintenancePolicy(keep_versions=1, every_commits=0, min_age_s=4.0)
    sink = LanceSink(str(tmp_path / "orders.lance"), job.schema_.arrow_schema(), "ts",
                     maintenance=policy)  # fmt: skip
    sink.ensure_table()
    for i in range(4):
        _backfill(sink, f"old{i}", Rows(100 * i, 1, 10 * i, 10))
    last_old = lance.dataset(sink.uri).version
    time.sleep(4.5)
    for i in range(4):
        _backfill(sink, f"young{i}", Rows(1_000 + 100 * i, 2, 10 * i, 10))
    young = set(range(last_old + 1, lance.dataset(sink.uri).version + 1))
    assert sink.maintain() == last_old  # versions 1..last_old, all older than 4 s
    left = {int(r["version"]) for r in lance.dataset(sink.uri).version_refs()}
    assert young <= left and not left & set(range(1, last_old + 1))
    fresh = LanceSink(sink.uri, job.schema_.arrow_schema(), "ts", maintenance=policy)
    assert all(fresh.find_commit("contract", f"old{i}") is not None for i in range(4))
