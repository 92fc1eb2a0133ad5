"""The TOML job file, validated up front (DESIGN §7).

Unknown keys are rejected with a did-you-mean, every error names the key and the expected
type, secrets may come from the environment as ``${NAME}`` and are never echoed back.
Relative paths are resolved against the job file's folder.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from coordinator.core.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

#: Field types a job may declare, mapped to Arrow types.
FIELD_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "float32": pa.float32(),
    "bool": pa.bool_(),
    "date": pa.date32(),
    "timestamp_ms": pa.timestamp("ms", tz="UTC"),
    "timestamp_us": pa.timestamp("us", tz="UTC"),
    "decimal(18,2)": pa.decimal128(18, 2),
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class SecuritySpec(_Model):
    """librdkafka security settings; the password may be ``${ENV}``."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None


class StreamSpec(_Model):
    """The live Kafka topic."""

    bootstrap: str = Field(min_length=1)
    topic: str
    group: str | None = None
    format: Literal["json"] = "json"
    security: SecuritySpec = SecuritySpec()

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not _TOPIC.match(v) or v in (".", ".."):
            raise ValueError(f"expected a Kafka topic name ([A-Za-z0-9._-], 1-249), found {v!r}")
        return v


class SchemaSpec(_Model):
    """Record fields (in order) with their types, and the event-time field."""

    fields: dict[str, str]
    required: list[str] = []
    event_time: str

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        for name, type_name in v.items():
            if not _IDENT.match(name) or name.startswith("_seamline") or name.startswith("_kafka"):
                raise ValueError(f"expected a plain column name, found {name!r}")
            if type_name not in FIELD_TYPES:
                raise ValueError(
                    f"field {name!r}: expected one of {sorted(FIELD_TYPES)}, found {type_name!r}"
                )
        return v

    def arrow_schema(self) -> pa.Schema:
        """The user columns as an Arrow schema (lineage columns are added by writers)."""
        required = set(self.required) | {self.event_time}
        return pa.schema(
            [
                pa.field(n, FIELD_TYPES[t], nullable=n not in required)
                for n, t in self.fields.items()
            ]
        )


class TableSpec(_Model):
    """Where rows land."""

    format: Literal["iceberg", "lance"]
    identifier: str | None = None  # iceberg: namespace.table
    catalog_name: str = "seamline"
    catalog_uri: SecretStr | None = None  # may hold a password: a secret
    warehouse: str | None = None
    catalog_properties: dict[str, SecretStr] = {}
    uri: str | None = None  # lance dataset path or URI
    key: list[str] = []
    version: str | None = None  # merge: column deciding the newest version of a key
    strict_keys: bool = False  # merge: duplicate keys inside one batch are an error
    partition_by: Literal["day", "hour", "none"] = "day"

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, v: str | None) -> str | None:
        if v is not None and not all(_IDENT.match(p) for p in v.split(".")):
            raise ValueError(f"expected namespace.table of plain names, found {v!r}")
        return v


class ArchiveSpec(_Model):
    """Archive files holding history older than Kafka's retention."""

    glob: str
    format: Literal["parquet", "csv", "jsonl"] = "parquet"
    bucket: Literal["day", "hour", "month"] = "day"


class HistorySpec(_Model):
    """History sources: the topic's retained range and optional archives."""

    kafka: bool = True
    archive: list[ArchiveSpec] = []


class TransformSpec(_Model):
    """User code ``module:function`` (Arrow table in, Arrow table out)."""

    function: str | None = None

    @field_validator("function")
    @classmethod
    def _function(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", v):
            raise ValueError(f"expected module.path:function, found {v!r}")
        return v


class BackfillSpec(_Model):
    """How history is written."""

    mode: Literal["overwrite", "merge"] = "overwrite"
    slice_records: Annotated[int, Field(gt=0)] = 250_000
    concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    lag_threshold: Annotated[int, Field(gt=0)] = 100_000
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5


class LiveSpec(_Model):
    """How the live consumer batches and commits."""

    batch_records: Annotated[int, Field(gt=0)] = 50_000
    batch_seconds: Annotated[float, Field(gt=0)] = 2.0
    quarantine_topic: str | None = None
    expire_snapshots_every: Annotated[int, Field(ge=0)] = 50
    keep_snapshots: Annotated[int, Field(ge=1)] = 20
    # Minimum seconds between two live table commits (batches grow under load instead):
    # keeps the snapshot count low and leaves room for the backfill's overwrites.
    min_commit_seconds: Annotated[float, Field(ge=0)] = 1.0


class StateSpec(_Model):
    """Where the coordinator keeps its state (a URL may hold a password: a secret)."""

    url: SecretStr | None = None


class JobSpec(_Model):
    """A whole job file."""

    job_id: str
    stream: StreamSpec
    schema_: SchemaSpec = Field(alias="schema")
    table: TableSpec
    history: HistorySpec = HistorySpec()
    transform: TransformSpec = TransformSpec()
    backfill: BackfillSpec = BackfillSpec()
    live: LiveSpec = LiveSpec()
    state: StateSpec = StateSpec()
    base_dir: Path

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$", v) or ".." in v:
            raise ValueError(f"expected letters, digits, '_', '-', '.', found {v!r}")
        return v

    def state_url(self) -> str:
        """The state store URL, defaulting to a SQLite file next to the job file."""
        if self.state.url is not None:
            return self.state.url.get_secret_value()
        return f"sqlite:///{self.base_dir / '.seamline' / f'{self.job_id}.db'}"

    def resolve(self, path: str) -> Path:
        """A path from the job file, relative to the job file's folder."""
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p

    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings for this stream (bootstrap and security), secrets included."""
        sec = self.stream.security
        conf = {"bootstrap.servers": self.stream.bootstrap, "security.protocol": sec.protocol}
        if sec.sasl_mechanism:
            conf["sasl.mechanism"] = sec.sasl_mechanism
        if sec.sasl_username:
            conf["sasl.username"] = sec.sasl_username
        if sec.sasl_password:
            conf["sasl.password"] = sec.sasl_password.get_secret_value()
        if sec.ssl_ca_location:
            conf["ssl.ca.location"] = sec.ssl_ca_location
        return conf


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(
                    f"key={where}: environment variable {name} is not set",
                    hint=f"export {name}=... before running seamline",
                )
            return os.environ[name]

        return _ENV_REF.sub(sub, value)
    return value


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if info is None:
            by_alias = {f.alias: f for f in current.model_fields.values() if f.alias}
            info = by_alias.get(part)
        if info is None:
            return []
        ann = info.annotation
        args = getattr(ann, "__args__", ())
        current = next(
            (a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        if current is None:
            return []
    return [f.alias or n for n, f in current.model_fields.items() if n != "base_dir"]


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _allowed_keys(JobSpec, loc), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"key={key}: unknown key{hint}"
    if err["type"] == "missing":
        return f"key={key}: required key is missing"
    found = err.get("input")
    shown = "***" if "password" in key or "secret" in key or "url" in key else repr(found)
    return f"key={key}: {err['msg']}, found {shown}"


def parse_job(doc: dict[str, Any], *, base_dir: Path, default_id: str) -> JobSpec:
    """Validate a parsed TOML document. Raises ``ConfigError`` listing every problem."""
    doc = _expand_env(dict(doc), "")
    job = doc.pop("job", {})
    if not isinstance(job, dict) or set(job) - {"id"}:
        raise ConfigError("key=job: only 'id' is allowed in [job]")
    try:
        spec = JobSpec.model_validate(
            {**doc, "job_id": job.get("id", default_id), "base_dir": base_dir}
        )
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ConfigError("invalid job file: " + "; ".join(lines)) from None
    _cross_checks(spec)
    return spec


def _cross_checks(spec: JobSpec) -> None:
    fields = spec.schema_.fields
    if spec.schema_.event_time not in fields:
        raise ConfigError(
            f"key=schema.event_time: expected one of {list(fields)}, found "
            f"{spec.schema_.event_time!r}"
        )
    for key in [*spec.table.key, *spec.schema_.required]:
        if key not in fields:
            raise ConfigError(
                f"key=table.key/schema.required: unknown column {key!r}",
                hint=f"declare it in [schema.fields] ({', '.join(fields)})",
            )
    version = spec.table.version
    if version is not None and (version not in fields or version in spec.table.key):
        raise ConfigError(
            f"key=table.version: expected a declared column outside table.key, found {version!r}",
            hint=f"name one of [schema.fields] ({', '.join(fields)}), e.g. updated_at",
        )
    if spec.table.format == "iceberg" and not (spec.table.identifier and spec.table.catalog_uri):
        raise ConfigError("key=table: iceberg needs 'identifier' and 'catalog_uri'")
    if spec.table.format == "lance" and not spec.table.uri:
        raise ConfigError("key=table.uri: lance needs a dataset path or URI")
    if spec.backfill.mode == "merge" and not spec.table.key:
        raise ConfigError(
            "key=table.key: merge mode needs key columns",
            hint='set table.key = ["order_id"] or use mode = "overwrite"',
        )


def load_job(path: str | Path) -> JobSpec:
    """Read and validate a job file. Raises ``ConfigError`` with one clear line."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"job file {str(p)!r} cannot be read: {exc.strerror}",
            hint="pass the path of a .toml job file",
        ) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"job file {str(p)!r} is not valid TOML: {exc}") from None
    return parse_job(doc, base_dir=p.resolve().parent, default_id=p.stem)
