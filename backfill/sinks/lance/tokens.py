"""Commit-token lookup on a Lance dataset that never depends on old versions (DESIGN §3).

Each commit's token is in its version's ``transaction_properties``, which disappear when old
versions are cleaned up (the live consumer's maintenance). Lookups therefore read:

* the **token index**: dataset config keys ``seamline.token.index.<job_id>/<slice_id>`` holding
  the newest backfill token of each slice with its version and commit time, valid for every
  version ``<= seamline.token.checkpoint-version``. The index is folded forward (one
  ``UpdateConfig`` commit) by :func:`fold_updates` callers: the live maintenance writes it in the
  same commit as its offset checkpoint and removes only versions at or below it, and a backfill
  whose lookups meet a long tail folds it too; and
* the **tail**: transactions of the versions above the checkpoint that still exist, newest
  first (read by number while the tail is short; listed with ``version_refs()``, which reads
  no manifest, when it is long or a version turns out to be gone).

So cleanup never removes a token a running backfill needs, and a lookup reads
``O(versions since the last fold)`` transaction files, whatever the dataset's history length.
Versions removed by someone else (without a fold) are skipped, never read. Live tokens are not
indexed (one per micro-batch; their lookups only concern recent, unknown-outcome commits).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime

import lance

from coordinator.core.ports import CommitRecord
from coordinator.core.values import TOKEN_PREFIX, CommitToken, SnapshotId

log = logging.getLogger(__name__)

TOKEN_CHECKPOINT_KEY = f"{TOKEN_PREFIX}token.checkpoint-version"
TOKEN_INDEX_PREFIX = f"{TOKEN_PREFIX}token.index."

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
    """``(version, token)`` of the seamline commits in existing versions above ``above``."""
    for version, props in transactions(ds, cache, above):
        token = CommitToken.from_properties(props)
        if token is not None:
            yield version, token


def committed_at(ds: lance.LanceDataset, version: int) -> datetime:
    """When ``version`` was committed (reads that one manifest)."""
    return aware(ds.checkout_version(version).get_version()["timestamp"])


def index_key(token: CommitToken) -> str:
    """The config key holding ``token``'s slice in the index."""
    return f"{TOKEN_INDEX_PREFIX}{token.job_id}/{token.slice_id}"


def _entry(record: CommitRecord) -> str:
    return json.dumps(
        {
            "version": int(record.snapshot_id),
            "at": record.committed_at.isoformat(),
            "token": record.token.to_properties(),
        },
        sort_keys=True,
    )


def indexed(config: Mapping[str, str]) -> list[CommitRecord]:
    """The records held in the token index, newest version first."""
    out = []
    for key, value in config.items():
        if not key.startswith(TOKEN_INDEX_PREFIX):
            continue
        doc = json.loads(value)
        token = CommitToken.from_properties(doc["token"])
        if token is not None:
            at = datetime.fromisoformat(doc["at"])
            out.append(CommitRecord(token, SnapshotId(int(doc["version"])), at))
    return sorted(out, key=lambda r: r.snapshot_id, reverse=True)


def fold_updates(ds: lance.LanceDataset, cache: TransactionCache) -> dict[str, str | None]:
    """Config updates moving the token index to ``ds.version``: the newest backfill token of
    every slice committed in the tail, and the new checkpoint."""
    config = ds.config()
    newest: dict[str, tuple[int, CommitToken]] = {}
    for version, token in tail(ds, cache, checkpoint(config)):
        if token.side == "backfill":
            newest.setdefault(index_key(token), (version, token))  # tail is newest first
    updates: dict[str, str | None] = {
        key: _entry(CommitRecord(token, SnapshotId(version), committed_at(ds, version)))
        for key, (version, token) in newest.items()
    }
    updates[TOKEN_CHECKPOINT_KEY] = str(ds.version)
    return updates
