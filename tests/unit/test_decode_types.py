"""The declared field types (job grammar) and the decoder registry keyed by ``[stream] format``."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from coordinator.core.errors import ConfigError
from coordinator.core.fieldtypes import field_type
from coordinator.core.jobspec import parse_job
from stream.decode import DECODERS, decoder_for
from stream.decode.json import JsonDecoder


def test_field_types_map_to_arrow_types() -> None:
    assert field_type("decimal(18,2)") == pa.decimal128(18, 2)
    assert field_type("decimal( 38 , 10 )") == pa.decimal128(38, 10)
    assert field_type("decimal(5,0)") == pa.decimal128(5, 0)
    assert field_type("int8") == pa.int8() and field_type("int16") == pa.int16()
    assert field_type("binary") == pa.binary() and field_type("date") == pa.date32()
    assert field_type("timestamp_us") == pa.timestamp("us", tz="UTC")


@pytest.mark.parametrize(
    "bad", ["decimal(39,2)", "decimal(0,0)", "decimal(4,5)", "decimal(18)", "money"]
)
def test_bad_field_types_say_what_is_accepted(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        field_type(bad)
    assert repr(bad) in str(info.value) and "decimal(" in str(info.value)


def test_job_with_a_bad_type_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    doc = {
        "stream": {"bootstrap": "b:1", "topic": "t"},
        "schema": {"event_time": "ts", "fields": {"ts": "timestamp_ms", "amt": "decimal(40,2)"}},
        "table": {"format": "lance", "uri": "x.lance"},
    }
    with pytest.raises(ConfigError) as info:
        parse_job(doc, base_dir=tmp_path, default_id="j")
    assert "field 'amt'" in str(info.value) and "decimal(40,2)" in str(info.value)
    doc["schema"]["fields"]["amt"] = "decimal(38,9)"  # type: ignore[index]
    job = parse_job(doc, base_dir=tmp_path, default_id="j")
    assert job.stream.format == "json"
    assert job.schema_.arrow_schema().field("amt").type == pa.decimal128(38, 9)


def test_decoder_for_the_job_format_and_a_clear_error_for_an_unknown_one() -> None:
    assert sorted(DECODERS) == ["avro", "json"]
    assert isinstance(decoder_for("json"), JsonDecoder)
    with pytest.raises(ConfigError) as info:
        decoder_for("jsn")
    assert "key=stream.format" in str(info.value) and "'json'" in str(info.value)
