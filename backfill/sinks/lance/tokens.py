"""Commit-token lookup on a Lance dataset that never depends on old versions (DESIGN §3).

Each commit's token is in its version's ``transaction_properties``, which disappear when old
versions are cleaned up (the live consumer's maintenance). Lookups therefore read:

* the **token index** (:class:`TokenIndex`): one small document per folded backfill commit
  (token, version, commit time) beside the dataset under ``_seamline/tokens/``, keyed by
  slice, complete for every version ``<= seamline.token.checkpoint-version`` (a dataset config
  key). It is folded forward by :func:`fold` callers (documents first, then one
  ``UpdateConfig`` moving the checkpoint): the live maintenance folds in the same commit as
  its offset checkpoint and removes only versions at or below it, and a backfill whose
  lookups meet a long tail folds it too. Nothing of it is in the dataset config, which every
  manifest carries, so commits never rewrite it and its size is no per-commit cost; and
* the **tail**: transactions of the versions above the checkpoint that still exist, newest
  first (read by number while the tail is short; listed with ``version_refs()``, which reads
  no manifest, when it is long or a version turns out to be gone).

So cleanup never removes a token a running backfill needs, and a lookup reads
``O(versions since the last fold)`` transaction files plus one index folder, whatever the
dataset's history length and slice count.
Versions removed by someone else (without a fold) are skipped, never read. Live tokens are not
indexed (one per micro-batch; their lookups only concern recent, unknown-outcome commits).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import lance
from lance.file import LanceFileSession

from coordinator.core.errors import WriterError
from coordinator.core.ports import CommitRecord
from coordinator.core.values import TOKEN_PREFIX, CommitToken, SnapshotId

log = logging.getLogger(__name__)

TOKEN_CHECKPOINT_KEY = f"{TOKEN_PREFIX}token.checkpoint-version"
#: Where the token index lives, relative to the dataset's root.
INDEX_DIR = "_seamline/tokens"
#: Config keys of the index as earlier releases kept it (moved out by the next fold).
LEGACY_INDEX_PREFIX = f"{TOKEN_PREFIX}token.index."

#: Tail length above which a backfill lookup folds the tail into the index itself.
FOLD_AFTER = 64


class TransactionCache:
    """Transaction properties by version (a Lance version never changes once committed)."""

    def __init__(self) -> None:
        self._props: dict[int, dict[str, str]] = {}

    def props(self, ds: lance.LanceDataset, version: int) -> dict[str, str]:
        """The properties of ``version`` (empty when it has none)."""
        hit = self._props.get(version)
        if hit is None:
            txn = ds.read_transaction(version)
            hit = dict(txn.transaction_properties or {}) if txn is not None else {}
            self._props[version] = hit
        return hit

    def forget(self, upto: int) -> None:
        """Drop the versions ``<= upto`` (below a checkpoint: never read again), so a long
        run's cache holds the tail only."""
        for version in [v for v in self._props if v <= upto]:
            del self._props[version]


def aware(stamp: object) -> datetime:
    """Lance version timestamps as aware UTC datetimes."""
    if isinstance(stamp, datetime):
        return stamp.astimezone(UTC)
    raise ValueError(f"expected a datetime version timestamp, found {stamp!r}")


def checkpoint(config: Mapping[str, str]) -> int:
    """The version up to which the token index is complete (0: no index yet)."""
    return int(config.get(TOKEN_CHECKPOINT_KEY, "0"))


def existing_versions(ds: lance.LanceDataset, above: int) -> list[int]:
    """Versions ``above < v <= ds.version`` that still exist, newest first (lists the
    ``_versions`` directory: no manifest is read, but the cost grows with the history)."""
    found = (int(ref["version"]) for ref in ds.version_refs())
    return sorted((v for v in found if above < v <= ds.version), reverse=True)


def transactions(
    ds: lance.LanceDataset, cache: TransactionCache, above: int
) -> Iterator[tuple[int, dict[str, str]]]:
    """``(version, transaction properties)`` of the versions above ``above`` that exist,
    newest first. A short span is read by number (nothing removes versions above a
    checkpoint); a long one, or a version found missing, lists the versions that exist."""
    short = ds.version - above <= FOLD_AFTER
    versions = range(ds.version, above, -1) if short else existing_versions(ds, above)
    for version in versions:
        try:
            props = cache.props(ds, version)
        except OSError as exc:
            if not short:
                raise
            log.info("version=%d is gone (%s), listing the versions that exist", version, exc)
            rest = [v for v in existing_versions(ds, above) if v < version]
            yield from ((v, cache.props(ds, v)) for v in rest)
            return
        yield version, props


def tail(
    ds: lance.LanceDataset, cache: TransactionCache, above: int
) -> Iterator[tuple[int, CommitToken]]:
    """``(version, token)`` of the seamline commits in existing versions above ``above`` (a
    token checkpoint: the cache forgets the versions at or below it)."""
    cache.forget(above)
    for version, props in transactions(ds, cache, above):
        token = CommitToken.from_properties(props)
        if token is not None:
            yield version, token


def committed_at(ds: lance.LanceDataset, version: int) -> datetime:
    """When ``version`` was committed (reads that one manifest)."""
    return aware(ds.checkout_version(version).get_version()["timestamp"])


class TokenIndex:
    """The folded token index, beside the dataset: one small JSON document per backfill
    commit at ``_seamline/tokens/<slice hash>/<version>.json`` (written through Lance's own
    object-store layer with the dataset's storage options; Lance's version cleanup only
    touches its own folders).

    Keyed by slice, so a lookup lists one folder (empty for a slice never folded) whatever
    the number of slices, and no commit rewrites it (the dataset config, which every
    manifest carries, stays the size of the live offsets). A document is never rewritten:
    each names its version, so two folds racing write the same bytes, never an older entry
    over a newer one.
    """

    def __init__(self, uri: str, storage_options: dict[str, str] | None = None) -> None:
        self.uri = uri
        self.storage_options = storage_options  # object-store keys: secrets, never logged
        self._files: LanceFileSession | None = None

    def _session(self) -> LanceFileSession:
        if self._files is None:
            self._files = LanceFileSession(self.uri, storage_options=self.storage_options)
        return self._files

    @staticmethod
    def folder(job_id: str, slice_id: str) -> str:
        """The folder holding ``job_id``/``slice_id``'s documents (ids hashed: any text)."""
        digest = hashlib.sha256(json.dumps([job_id, slice_id]).encode()).hexdigest()[:32]
        return f"{INDEX_DIR}/{digest}"

    def put(self, records: Sequence[CommitRecord]) -> None:
        """Write one document per record (before the checkpoint that relies on them)."""
        if not records:
            return
        files = self._session()
        with tempfile.TemporaryDirectory(prefix="seamline-tokens-") as tmp:
            for i, record in enumerate(records):
                local = Path(tmp) / f"{i}.json"
                local.write_text(_entry(record))
                folder = self.folder(record.token.job_id, record.token.slice_id)
                files.upload_file(local, f"{folder}/{int(record.snapshot_id):020d}.json")

    def get(
        self, job_id: str, slice_id: str, match: Callable[[CommitToken], bool]
    ) -> CommitRecord | None:
        """The newest folded commit of the slice whose token ``match``es."""
        names = sorted(self._session().list(self.folder(job_id, slice_id)), reverse=True)
        for name in names:
            record = self._read(name)
            same = record.token.job_id == job_id and record.token.slice_id == slice_id
            if same and match(record.token):
                return record
        return None

    def newest(self) -> list[CommitRecord]:
        """The newest folded commit of every slice, newest version first (lists the whole
        index: for reports, not for the per-slice path)."""
        by_folder: dict[str, str] = {}
        for name in self._session().list(INDEX_DIR):
            folder, _, leaf = name.rpartition("/")
            if leaf.endswith(".json") and name > by_folder.get(folder, ""):
                by_folder[folder] = name
        out = [self._read(name) for name in by_folder.values()]
        return sorted(out, key=lambda r: r.snapshot_id, reverse=True)

    def _read(self, name: str) -> CommitRecord:
        with tempfile.TemporaryDirectory(prefix="seamline-tokens-") as tmp:
            local = Path(tmp) / "entry.json"
            self._session().download_file(name, local)
            record = _record(local.read_text())
        if record is None:
            raise WriterError(
                f"uri={self.uri} file={name}: expected a commit token in the token index, "
                "found none",
                hint="the file was changed by hand: remove it (its version's token is gone)",
            )
        return record


def _entry(record: CommitRecord) -> str:
    return json.dumps(
        {
            "version": int(record.snapshot_id),
            "at": record.committed_at.isoformat(),
            "token": record.token.to_properties(),
        },
        sort_keys=True,
    )


def _record(text: str) -> CommitRecord | None:
    doc = json.loads(text)
    token = CommitToken.from_properties(doc["token"])
    if token is None:
        return None
    return CommitRecord(token, SnapshotId(int(doc["version"])), datetime.fromisoformat(doc["at"]))


def legacy(config: Mapping[str, str]) -> list[CommitRecord]:
    """Records of the index earlier releases kept in the dataset config (moved to the
    :class:`TokenIndex` by the next fold), newest version first."""
    out = []
    for key, value in config.items():
        if key.startswith(LEGACY_INDEX_PREFIX):
            record = _record(value)
            if record is not None:
                out.append(record)
    return sorted(out, key=lambda r: r.snapshot_id, reverse=True)


def fold(
    ds: lance.LanceDataset, cache: TransactionCache, index: TokenIndex
) -> dict[str, str | None]:
    """Move the token index to ``ds.version``: write the documents of every backfill commit
    in the tail (the newest of each slice) and of a legacy config index, then return the
    config updates the caller commits: the new checkpoint, the legacy keys removed. The
    documents are written before that commit, so the checkpoint never covers a missing one."""
    config = ds.config()
    newest: dict[tuple[str, str], tuple[int, CommitToken]] = {}
    for version, token in tail(ds, cache, checkpoint(config)):
        if token.side == "backfill":  # tail is newest first
            newest.setdefault((token.job_id, token.slice_id), (version, token))
    records = [
        CommitRecord(token, SnapshotId(version), committed_at(ds, version))
        for version, token in newest.values()
    ]
    index.put(legacy(config) + records)
    updates: dict[str, str | None] = {
        key: None for key in config if key.startswith(LEGACY_INDEX_PREFIX)
    }
    updates[TOKEN_CHECKPOINT_KEY] = str(ds.version)
    return updates
