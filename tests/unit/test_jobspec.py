"""The job file: validated up front, did-you-mean, ${ENV} secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.core.errors import ConfigError, ExitCode
from coordinator.core.jobspec import load_job

BASE = """
[job]
id = "orders"

[stream]
bootstrap = "127.0.0.1:39092"
topic = "orders"

[schema]
event_time = "ts"
required = ["order_id"]
[schema.fields]
order_id = "int64"
ts = "timestamp_ms"
amount = "decimal(18,2)"

[table]
format = "lance"
uri = "out/orders.lance"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_job(write(tmp_path, text))
    assert info.value.exit_code == ExitCode.CONFIG
    message = str(info.value)
    assert "\n" not in message  # one clear line
    return message


def test_valid_job_has_defaults_and_paths_relative_to_the_file(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, BASE))
    assert job.job_id == "orders" and job.backfill.mode == "overwrite"
    assert job.backfill.slice_records == 250_000 and job.history.kafka is True
    assert job.state_url() == f"sqlite:///{tmp_path / '.seamline' / 'orders.db'}"
    assert job.resolve("out/orders.lance") == tmp_path / "out" / "orders.lance"
    assert job.schema_.arrow_schema().names == ["order_id", "ts", "amount"]
    assert job.kafka_config() == {
        "bootstrap.servers": "127.0.0.1:39092",
        "security.protocol": "PLAINTEXT",
    }


def test_job_id_defaults_to_the_file_name(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, BASE.replace('[job]\nid = "orders"\n', "")))
    assert job.job_id == "job"


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE + "\n[backfill]\nconcurency = 3\n")
    assert "key=backfill.concurency: unknown key (did you mean 'concurrency'?)" in msg


def test_unknown_section_suggests_the_right_one(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE + "\n[backfil]\nmode = 'merge'\n")
    assert "key=backfil: unknown key (did you mean 'backfill'?)" in msg


def test_wrong_type_names_the_key_and_what_was_found(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE + '\n[backfill]\nslice_records = "lots"\n')
    assert "key=backfill.slice_records" in msg and "'lots'" in msg


def test_a_bad_field_type_is_named_once_with_a_suggestion(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE.replace('amount = "decimal(18,2)"', 'amount = "flaot64"'))
    assert "field 'amount'" in msg and "found 'flaot64' (did you mean 'float64'?)" in msg
    assert msg.count("found") == 1 and "order_id" not in msg  # no echo of [schema.fields]


def test_missing_required_key(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE.replace('topic = "orders"\n', ""))
    assert "key=stream.topic: required key is missing" in msg


def test_bad_topic_and_job_id_are_rejected(tmp_path: Path) -> None:
    assert "key=stream.topic" in error_of(
        tmp_path, BASE.replace('"orders"\n\n[schema]', '"a/b"\n\n[schema]')
    )
    assert "key=job_id" in error_of(tmp_path, BASE.replace('id = "orders"', 'id = "../x"'))


def test_env_secret_is_expanded_and_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_PW", "s3cret-Value-9")
    text = BASE.replace(
        'topic = "orders"\n',
        'topic = "orders"\n[stream.security]\nprotocol = "SASL_PLAINTEXT"\n'
        'sasl_mechanism = "PLAIN"\nsasl_username = "app"\nsasl_password = "${KAFKA_PW}"\n',
    )
    job = load_job(write(tmp_path, text))
    assert job.kafka_config()["sasl.password"] == "s3cret-Value-9"
    assert "s3cret-Value-9" not in repr(job) and "s3cret-Value-9" not in str(job.model_dump())


def test_missing_env_variable_names_the_key(tmp_path: Path) -> None:
    text = BASE + '\n[state]\nurl = "postgresql+psycopg://app:${NO_SUCH_SEAMLINE_VAR}@db/x"\n'
    msg = error_of(tmp_path, text)
    assert "key=state.url: environment variable NO_SUCH_SEAMLINE_VAR is not set" in msg


def test_secret_values_are_masked_in_type_errors(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE + "\n[state]\nurl = 12345\n")
    assert "key=state.url" in msg and "12345" not in msg


def test_cross_checks(tmp_path: Path) -> None:
    assert "key=schema.event_time" in error_of(
        tmp_path, BASE.replace('event_time = "ts"', 'event_time = "when"')
    )
    iceberg = BASE.replace('format = "lance"\nuri = "out/orders.lance"', 'format = "iceberg"')
    assert "iceberg needs 'identifier' and a catalog" in error_of(tmp_path, iceberg)
    merge = error_of(tmp_path, BASE + '\n[backfill]\nmode = "merge"\n')
    assert "key=table.key: merge mode needs key columns" in merge
    unknown_col = error_of(tmp_path, BASE.replace('uri = "out', 'key = ["nope"]\nuri = "out'))
    assert "unknown column 'nope'" in unknown_col


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_job(tmp_path / "missing.toml")
    assert "is not valid TOML" in error_of(tmp_path, "[stream\n")


def test_quarantine_topic_may_not_be_the_source_topic(tmp_path: Path) -> None:
    msg = error_of(tmp_path, BASE + '\n[live]\nquarantine_topic = "orders"\n')
    assert "key=live.quarantine_topic" in msg
    assert "stream.topic=orders" in msg and "re-inject" in msg
    assert 'did you mean "orders.seamline-dlq"' in msg


@pytest.mark.parametrize("name", ["__consumer_offsets", "__transaction_state", "__dlq"])
def test_quarantine_topic_may_not_be_kafka_internal(tmp_path: Path, name: str) -> None:
    msg = error_of(tmp_path, BASE + f'\n[live]\nquarantine_topic = "{name}"\n')
    assert "key=live.quarantine_topic" in msg and "Kafka-internal" in msg
    assert f"did you mean '{name.lstrip('_')}'" in msg


@pytest.mark.parametrize("name", ["a/b", "..", "", "x" * 250])
def test_quarantine_topic_must_be_a_topic_name(tmp_path: Path, name: str) -> None:
    msg = error_of(tmp_path, BASE + f'\n[live]\nquarantine_topic = "{name}"\n')
    assert "key=live.quarantine_topic" in msg and "expected a Kafka topic name" in msg


def test_quarantine_topic_of_its_own_is_accepted(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, BASE + '\n[live]\nquarantine_topic = "orders.dlq"\n'))
    assert job.live.quarantine_topic == "orders.dlq"


def test_relative_sqlite_state_url_resolves_against_the_job_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, BASE + '\n[state]\nurl = "sqlite:///state/x.db"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_job(path).state_url() == f"sqlite:///{tmp_path / 'state' / 'x.db'}"
    monkeypatch.chdir(tmp_path)
    assert load_job("job.toml").state_url() == f"sqlite:///{tmp_path / 'state' / 'x.db'}"


@pytest.mark.parametrize(
    "url",
    ["sqlite:////abs/x.db", "sqlite://", "sqlite:///:memory:", "postgresql+psycopg://u@h/db"],
)
def test_absolute_memory_and_server_state_urls_are_unchanged(tmp_path: Path, url: str) -> None:
    job = load_job(write(tmp_path, BASE + f'\n[state]\nurl = "{url}"\n'))
    assert job.state_url() == url


def test_nested_field_types_parse_structurally() -> None:
    import pyarrow as pa

    from coordinator.core.fieldtypes import field_type

    assert field_type("list<int64>") == pa.list_(pa.int64())
    assert field_type("struct<sku: string, qty: int32>") == pa.struct(
        [("sku", pa.string()), ("qty", pa.int32())]
    )
    assert field_type("map<string, decimal(18,2)>") == pa.map_(pa.string(), pa.decimal128(18, 2))
    assert field_type(" list< struct<a:list<timestamp_us>,b:map<string,date>> > ") == pa.list_(
        pa.struct(
            [
                ("a", pa.list_(pa.timestamp("us", tz="UTC"))),
                ("b", pa.map_(pa.string(), pa.date32())),
            ]
        )
    )


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("lst<int64>", "found 'lst<int64>' (did you mean 'list'?)"),
        (
            "list<strng>",
            "expected a type at position 5 of 'list<strng>', found 'strng>' "
            "(did you mean 'string'?)",
        ),
        ("list<int64", "expected '>' at position 10"),
        ("struct<a int32>", "expected ':' at position 9"),
        ("struct<a: int32, a: int64>", "distinct struct field names, found 'a' twice"),
        ("map<int32, string>", "expected map keys of type string"),
        ("list<decimal(40,2)>", "1 <= P <= 38"),
        ("list<int64>>", "expected end of the type"),
        ("list<" * 20 + "int8" + ">" * 20, "nested at most 16 deep"),
    ],
)
def test_a_bad_nested_type_names_the_field_and_shows_the_grammar(
    tmp_path: Path, bad: str, says: str
) -> None:
    msg = error_of(tmp_path, BASE.replace('amount = "decimal(18,2)"', f'amount = "{bad}"'))
    assert "field 'amount'" in msg and says in msg, msg
    if "position" in says or "did you mean" in says:
        assert "list<T>, struct<name: T, ...> or map<string, T>" in msg


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (("", ""), None),  # a valid job with a nested column
        (('event_time = "ts"', 'event_time = "amount"'), "key=schema.event_time: expected a "
         "scalar column, found nested column 'amount'"),
        (('uri = "out/orders.lance"', 'uri = "out/orders.lance"\nkey = ["amount"]'),
         "key=table.key: expected a scalar column, found nested column 'amount'"),
        (('uri = "out/orders.lance"', 'uri = "out/orders.lance"\n[[history.archive]]\n'
          'glob = "a/*.csv"\nformat = "csv"'),
         "key=history.archive[0].format: CSV cells cannot hold nested columns"),
        (('uri = "out/orders.lance"', 'uri = "out/orders.lance"\n[[backfill.assert]]\n'
          'check = "unique"\ncolumn = "amount"'),
         "expected a scalar column for check 'unique', found nested column 'amount'"),
        (('uri = "out/orders.lance"', 'uri = "out/orders.lance"\n[history]\n'
          'where = [{ column = "amount", op = "==", value = 1 }]'),
         "can only be tested with 'is null' / 'is not null', found op '=='"),
    ],
)  # fmt: skip
def test_nested_columns_are_values_never_keys_times_or_csv_cells(
    tmp_path: Path, edit: tuple[str, str], says: str | None
) -> None:
    text = BASE.replace('amount = "decimal(18,2)"', 'amount = "map<string, decimal(18,2)>"')
    if says is None:
        load_job(write(tmp_path, text))
        return
    msg = error_of(tmp_path, text.replace(*edit))
    assert says in msg, msg


def test_delete_when_needs_merge_mode_a_known_column_and_a_value_of_its_type(
    tmp_path: Path,
) -> None:
    fields = BASE.replace('amount = "decimal(18,2)"', 'amount = "decimal(18,2)"\nop = "string"')
    merge = fields.replace("[table]\n", '[table]\nkey = ["order_id"]\n') + (
        '\n[backfill]\nmode = "merge"\n'
    )
    marker = '[table]\ndelete_when = { field = "op", equals = "d" }\n'
    job = load_job(write(tmp_path, merge.replace("[table]\n", marker)))
    assert job.table.delete_when is not None and job.table.delete_when.equals == "d"
    msg = error_of(tmp_path, fields.replace("[table]\n", marker))
    assert "key=table.delete_when: tombstones need mode = \"merge\"" in msg
    assert "found mode = 'overwrite'" in msg
    unknown = merge.replace("[table]\n", marker.replace('"op"', '"opp"'))
    assert "key=table.delete_when.field" in error_of(tmp_path, unknown)
    assert "'opp'" in error_of(tmp_path, unknown)
    keyed = merge.replace("[table]\n", marker.replace('"op"', '"order_id"'))
    assert "outside table.key" in error_of(tmp_path, keyed)
    typed = merge.replace("[table]\n", marker.replace('"d"', "1"))
    assert "key=table.delete_when.equals: expected a value of column 'op' (string), found 1" in (
        error_of(tmp_path, typed)
    )
    extra = merge.replace("[table]\n", marker.replace("}", ", value = 1 }"))
    assert "delete_when" in error_of(tmp_path, extra)
