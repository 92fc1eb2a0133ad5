"""Two workers creating the same Iceberg table at once both go on (real SQL catalog): the
loser of the race finds the winner's namespace and table instead of failing its first slice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from backfill.sinks import open_sink
from backfill.sinks.iceberg.sink import IcebergSink
from tests.contract.backfill_writers import make_job

pytestmark = pytest.mark.integration


def _sink(root: Path) -> IcebergSink:
    sink = open_sink(make_job("iceberg-overwrite", root, "127.0.0.1:9", "orders"))
    assert isinstance(sink, IcebergSink)
    return sink


def test_the_loser_of_a_table_creation_race_uses_the_winners_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner, loser = _sink(tmp_path), _sink(tmp_path)
    winner.ensure_table()
    uuid = winner.catalog.load_table(winner.identifier).metadata.table_uuid
    checks: list[bool] = []
    real = loser.catalog.table_exists

    def raced(identifier: Any) -> bool:  # the loser checked before the winner created it
        checks.append(True)
        return False if len(checks) == 1 else real(identifier)

    monkeypatch.setattr(loser.catalog, "table_exists", raced)

    def clash(namespace: Any, *_: Any) -> None:  # how the SQL catalog reports that race
        raise RuntimeError("UNIQUE constraint failed: iceberg_namespace_properties")

    monkeypatch.setattr(loser.catalog, "create_namespace", clash)
    loser.ensure_table()
    assert len(checks) == 2  # it looked again after its create failed
    assert loser.catalog.load_table(loser.identifier).metadata.table_uuid == uuid


def test_a_namespace_error_is_raised_when_no_one_created_the_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = _sink(tmp_path)

    def broken(namespace: Any, *_: Any) -> None:
        raise RuntimeError("catalog database is read-only")

    monkeypatch.setattr(sink.catalog, "create_namespace", broken)
    with pytest.raises(RuntimeError, match="read-only"):
        sink.ensure_table()
