"""Plain-JSON forms of slices, scopes and commit tokens as the state store keeps them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from coordinator.core.values import (
    CommitToken,
    OffsetRange,
    Scope,
    Slice,
    SliceKey,
    TimeBucket,
)


def scope_to_json(scope: Scope) -> dict[str, Any]:
    """Canonical JSON of a scope (also the input of the plan hash)."""
    doc: dict[str, Any] = {"source": scope.source, "ranges": [r.to_json() for r in scope.ranges]}
    if scope.bucket is not None:
        doc["bucket"] = {
            "start": scope.bucket.start.isoformat(),
            "end": scope.bucket.end.isoformat(),
        }
    if scope.key is not None:  # only keyed scopes carry it: older plan hashes stay the same
        doc["key"] = {"column": scope.key.column, "values": list(scope.key.values)}
    return doc


def scope_from_json(doc: dict[str, Any]) -> Scope:
    """Inverse of :func:`scope_to_json`."""
    bucket = doc.get("bucket")
    key = doc.get("key")
    return Scope(
        source="kafka" if doc["source"] == "kafka" else "archive",
        ranges=tuple(OffsetRange.from_json(r) for r in doc.get("ranges", [])),
        bucket=(
            TimeBucket(
                datetime.fromisoformat(bucket["start"]), datetime.fromisoformat(bucket["end"])
            )
            if bucket
            else None
        ),
        key=SliceKey(key["column"], tuple(key["values"])) if key else None,
    )


def slice_to_json(slice_: Slice) -> dict[str, Any]:
    """Canonical JSON of a slice (id, scope, files, estimates)."""
    return {
        "slice_id": slice_.slice_id,
        "scope": scope_to_json(slice_.scope),
        "files": list(slice_.files),
        "est_rows": slice_.est_rows,
        "est_bytes": slice_.est_bytes,
    }


def slice_from_json(doc: dict[str, Any]) -> Slice:
    """Inverse of :func:`slice_to_json`."""
    return Slice(
        slice_id=doc["slice_id"],
        scope=scope_from_json(doc["scope"]),
        files=tuple(doc.get("files", ())),
        est_rows=int(doc.get("est_rows", 0)),
        est_bytes=int(doc.get("est_bytes", 0)),
    )


def token_to_json(token: CommitToken) -> dict[str, str]:
    """A commit token as the flat properties it is stored with in the table."""
    return token.to_properties()


def token_from_json(doc: dict[str, str] | None) -> CommitToken | None:
    """Inverse of :func:`token_to_json`."""
    return CommitToken.from_properties(doc) if doc else None
