"""The job-file reference in the README and ``seamline schema`` come from the model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from coordinator.core.jobref import (
    DESCRIPTIONS,
    SECTIONS,
    job_file_schema,
    job_reference_markdown,
    missing_descriptions,
)
from coordinator.core.jobspec import JobSpec, parse_job

ROOT = Path(__file__).resolve().parents[2]


def _readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    start, end = "<!-- job-reference:start -->\n", "<!-- job-reference:end -->"
    assert start in text and end in text
    return text.split(start, 1)[1].split(end, 1)[0]


def test_the_readme_reference_is_the_generated_one() -> None:
    assert _readme_block() == job_reference_markdown(), (
        "README job-file reference drifted from the model: paste "
        "coordinator.core.jobref.job_reference_markdown() between the markers"
    )


def test_every_key_of_the_model_is_described_and_no_description_is_stale() -> None:
    assert missing_descriptions() == []
    keys = {f"{h.strip('[]')}.{f.alias or n}" for h, m in SECTIONS for n, f in m.model_fields.items()}
    assert set(DESCRIPTIONS) - keys == set()
    sections = {h.strip("[]").split(".")[0] for h, _ in SECTIONS}
    assert {f.alias or n for n, f in JobSpec.model_fields.items()} - sections == {"job_id", "base_dir"}


def test_the_schema_command_prints_a_schema_of_the_file_layout(tmp_path: Path) -> None:
    res = subprocess.run([str(Path(sys.executable).parent / "seamline"), "schema"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    schema = json.loads(res.stdout)
    assert schema == job_file_schema()
    assert set(schema["properties"]) == {"job", "stream", "schema", "table", "history",
                                         "transform", "backfill", "live", "state"}  # fmt: skip
    assert schema["properties"]["job"]["additionalProperties"] is False
    assert "job_id" not in schema["required"] and "table" in schema["required"]
    # a file valid for the model uses only keys the schema names
    doc = {"job": {"id": "x"}, "stream": {"bootstrap": "b:9092", "topic": "t"},
           "schema": {"fields": {"ts": "timestamp_ms"}, "event_time": "ts"},
           "table": {"format": "lance", "uri": "t.lance"}}  # fmt: skip
    parse_job(dict(doc), base_dir=tmp_path, default_id="x")
    assert set(doc) <= set(schema["properties"])
