"""``reprocess --from/--to`` before 1970 is refused (Kafka reads -2/-1 ms as earliest/latest)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.cli.main import cli
from coordinator.core.errors import ConfigError, ExitCode
from coordinator.core.jobspec import load_job
from coordinator.run.reprocess import epoch_ms, parse_when, time_bound
from coordinator.service import reprocess

JOB = """
[job]
id = "orders"
[stream]
bootstrap = "127.0.0.1:1"
topic = "orders"
[schema]
event_time = "ts"
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"
[table]
format = "lance"
uri = "t.lance"
"""

JUST_BEFORE = [
    ("1969-12-31T23:59:59.998Z", "1969-12-31T23:59:59.999Z"),  # -2 ms, -1 ms: the sentinels
    ("1969-12-31T23:59:59.999Z", "2024-01-01"),
    ("1900-01-01", "1970-01-01"),
]


@pytest.mark.parametrize(("start", "end"), JUST_BEFORE)
def test_reprocess_refuses_times_before_the_epoch_before_touching_anything(
    tmp_path: Path, start: str, end: str
) -> None:
    path = tmp_path / "orders.toml"
    path.write_text(JOB)
    with pytest.raises(ConfigError) as info:  # no state store exists: the time check comes first
        reprocess(load_job(path), parse_when(start), parse_when(end))
    assert info.value.exit_code == ExitCode.CONFIG
    assert "expected a time at or after 1970-01-01T00:00:00Z" in str(info.value)
    assert "key=--from" in str(info.value)
    assert not (tmp_path / ".seamline").exists()


def test_cli_reprocess_before_1970_exits_3_saying_what_to_pass(tmp_path: Path) -> None:
    path = tmp_path / "orders.toml"
    path.write_text(JOB)
    args = ["reprocess", str(path), "--from", "2024-01-01", "--to", "1969-12-31T23:59:59.999Z"]
    with pytest.raises(ConfigError) as info:
        CliRunner().invoke(cli, args, catch_exceptions=False, standalone_mode=False)
    assert info.value.exit_code == ExitCode.CONFIG
    assert int(info.value.exit_code) == 3
    assert "key=--to" in str(info.value) and "from 1970 on" in str(info.value)


def test_epoch_ms_accepts_the_epoch_itself() -> None:
    assert epoch_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert epoch_ms(datetime(2024, 1, 1, tzinfo=UTC)) == 1_704_067_200_000


@pytest.mark.parametrize(("offset", "expected"), [(-1, 200), (-1001, 200), (0, 0), (150, 150)])
def test_offsets_for_times_minus_one_means_none_that_is_the_range_end(
    offset: int, expected: int
) -> None:
    assert time_bound(offset, 200) == expected
