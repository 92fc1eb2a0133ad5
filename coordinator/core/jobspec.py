"""The TOML job file, validated up front (DESIGN §7).

Unknown keys are rejected with a did-you-mean, every error names the key and the expected
type, secrets may come from the environment as ``${NAME}`` and are never echoed back.
Relative paths are resolved against the job file's folder.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from coordinator.core import lineage
from coordinator.core.catalogspec import CatalogSpec, StorageSpec
from coordinator.core.controls import AssertSpec, WhereSpec, where_expression
from coordinator.core.errors import ConfigError
from coordinator.core.fieldtypes import field_type
from coordinator.core.jobchecks import cross_checks
from coordinator.core.jobtext import check_userinfo, describe_error, expand_env

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

#: Arrow field metadata marking a float field whose NaN / Infinity values are kept.
NON_FINITE_KEY = b"seamline.non_finite"
#: Arrow field metadata naming where a ``[schema.kafka]`` column comes from (``key``...).
KAFKA_SOURCE_KEY = b"seamline.kafka"
_KAFKA_SOURCE = re.compile(r"(key|header:[^:\s]{1,249})(:json)?|timestamp")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class SecuritySpec(_Model):
    """librdkafka security settings; the password may be ``${ENV}``."""

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None


class AvroSpec(_Model):
    """Where Avro records get their writer schema: a file, or a Schema Registry (wire format)."""

    schema_file: str | None = None  # an .avsc file, relative to the job file
    registry_url: SecretStr | None = None  # may hold a password: a secret

    @field_validator("registry_url")
    @classmethod
    def _registry_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            url = v.get_secret_value()
            check_userinfo(url)
            if not url.startswith(("http://", "https://")):
                raise ValueError("expected an http:// or https:// URL")
        return v


class StreamSpec(_Model):
    """The live Kafka topic."""

    bootstrap: str = Field(min_length=1)
    topic: str
    group: str | None = None
    format: Literal["json", "avro"] = "json"
    avro: AvroSpec | None = None
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
    # NaN / Infinity in float fields: quarantined by default; "keep" stores them (IEEE).
    non_finite: Literal["quarantine", "keep"] = "quarantine"
    # column -> "key" | "header:NAME" (either with ":json") | "timestamp": Kafka metadata
    kafka: dict[str, str] = {}

    @field_validator("kafka")
    @classmethod
    def _kafka(cls, v: dict[str, str]) -> dict[str, str]:
        for name, source in v.items():
            if not _KAFKA_SOURCE.fullmatch(source):
                raise ValueError(
                    f"column {name!r}: expected \"key\", \"header:NAME\" (either may end in "
                    f"\":json\") or \"timestamp\", found {source!r}"
                )
        return v

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: dict[str, str]) -> dict[str, str]:
        for name, type_name in v.items():
            if not _IDENT.match(name) or name.startswith("_seamline") or name.startswith("_kafka"):
                raise ValueError(f"expected a plain column name, found {name!r}")
            try:
                field_type(type_name)
            except ValueError as exc:
                raise ValueError(f"field {name!r}: {exc}") from None
        return v

    def _field(self, name: str, type_: pa.DataType, nullable: bool) -> pa.Field:
        meta: dict[bytes, bytes] = {}
        if self.non_finite == "keep" and pa.types.is_floating(type_):
            meta[NON_FINITE_KEY] = b"keep"
        if name in self.kafka:
            meta[KAFKA_SOURCE_KEY] = self.kafka[name].encode()
        return pa.field(name, type_, nullable=nullable, metadata=meta or None)

    def arrow_schema(self) -> pa.Schema:
        """The user columns as an Arrow schema (lineage columns are added by writers)."""
        required = set(self.required) | {self.event_time}
        return pa.schema(
            [self._field(n, field_type(t), n not in required) for n, t in self.fields.items()]
        )


class DeleteWhenSpec(_Model):
    """Merge mode: a record whose ``field`` equals ``equals`` is its key's tombstone, or
    (``null_value = true``, Kafka's compaction idiom) a keyed message with a null value."""

    field: str | None = None
    equals: StrictBool | StrictInt | StrictStr | None = None
    null_value: StrictBool = False

    @model_validator(mode="after")
    def _one_spelling(self) -> DeleteWhenSpec:
        marker = self.field is not None or self.equals is not None
        if self.null_value and marker:
            raise ValueError(
                "expected either { field, equals } or { null_value = true }, found both"
            )
        if not self.null_value and (self.field is None or self.equals is None):
            raise ValueError(
                "expected { field = \"op\", equals = \"d\" } (a declared marker) or "
                "{ null_value = true } (a keyed message with a null value)"
            )
        return self

    def marker(self) -> tuple[str, object]:
        """``(column, value)`` marking a tombstone row: the declared field, or for null values
        the ``_seamline_deleted`` column the decoder sets itself."""
        if self.null_value:
            return lineage.DELETED, True
        assert self.field is not None and self.equals is not None  # checked on construction
        return self.field, self.equals


class TableSpec(_Model):
    """Where rows land.

    ``catalog`` is the Iceberg catalog (any pyiceberg type); the older flat keys
    ``catalog_uri``, ``catalog_name``, ``warehouse`` and ``catalog_properties`` still work and
    mean a SQL catalog. ``storage`` is S3-compatible object storage for both formats.
    """

    format: Literal["iceberg", "lance"]
    identifier: str | None = None  # iceberg: namespace.table
    catalog: CatalogSpec | None = None
    catalog_name: str = "seamline"
    catalog_uri: SecretStr | None = None  # may hold a password: a secret
    warehouse: str | None = None
    catalog_properties: dict[str, SecretStr] = {}
    storage: StorageSpec = StorageSpec()
    uri: str | None = None  # lance dataset path or URI
    key: list[str] = []
    version: str | None = None  # merge: column deciding the newest version of a key
    strict_keys: bool = False  # merge: duplicate keys inside one batch are an error
    delete_when: DeleteWhenSpec | None = None  # merge: the declared tombstone marker
    partition_by: Literal["day", "hour", "none"] = "day"

    def catalog_spec(self) -> CatalogSpec | None:
        """The catalog, from ``catalog`` or the legacy flat keys (a SQL catalog)."""
        if self.catalog is not None:
            return self.catalog
        if self.catalog_uri is None:
            return None
        return CatalogSpec(
            type="sql", name=self.catalog_name, uri=self.catalog_uri,
            properties=self.catalog_properties,
        )  # fmt: skip

    def catalog_warehouse(self) -> str | None:
        """The warehouse: ``catalog.warehouse``, else ``warehouse``."""
        if self.catalog is not None and self.catalog.warehouse is not None:
            return self.catalog.warehouse
        return self.warehouse

    @field_validator("catalog_uri")
    @classmethod
    def _catalog_uri(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_userinfo(v.get_secret_value())
        return v

    @field_validator("identifier")
    @classmethod
    def _identifier(cls, v: str | None) -> str | None:
        if v is not None and not all(_IDENT.match(p) for p in v.split(".")):
            raise ValueError(f"expected namespace.table of plain names, found {v!r}")
        return v


KeyItem = StrictStr | StrictInt


class SliceBySpec(_Model):
    """Custom-key archive slices: one slice per key value (or group of values) per bucket."""

    column: str
    # None: discovered from the archive files (every non-null value found)
    values: list[KeyItem | list[KeyItem]] | None = None

    @field_validator("values")
    @classmethod
    def _values(cls, v: list[KeyItem | list[KeyItem]] | None) -> Any:
        if v is None:
            return v
        if not v:
            raise ValueError("expected at least one value (or leave values out to discover them)")
        seen: set[KeyItem] = set()
        for item in v:
            group = item if isinstance(item, list) else [item]
            if not group:
                raise ValueError("expected a non-empty group of values, found []")
            twice = seen.intersection(group)
            if twice or len(set(group)) != len(group):
                raise ValueError(
                    f"expected each value in one slice only, found {sorted(map(repr, twice)) or group}"
                )
            seen.update(group)
        return v

    def groups(self) -> list[tuple[KeyItem, ...]] | None:
        """The declared values as one tuple per slice (None: discover them)."""
        if self.values is None:
            return None
        return [tuple(i) if isinstance(i, list) else (i,) for i in self.values]


class ArchiveSpec(_Model):
    """Archive files holding history older than Kafka's retention."""

    glob: str
    format: Literal["parquet", "csv", "jsonl"] = "parquet"
    bucket: Literal["day", "hour", "month"] = "day"
    slice_by: SliceBySpec | None = None


class HistorySpec(_Model):
    """History sources: the topic's retained range and optional archives."""

    kafka: bool = True
    archive: list[ArchiveSpec] = []
    where: list[WhereSpec] = []  # history row filter (coordinator/core/controls)


class TransformSpec(_Model):
    """User code ``module:function`` (Arrow table in, Arrow table out)."""

    function: str | None = None

    @field_validator("function")
    @classmethod
    def _function(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", v):
            raise ValueError(f"expected module.path:function, found {v!r}")
        return v


class RaySpec(_Model):
    """``[backfill.ray]``: the Ray cluster slices run on (``backfill.executor = "ray"``)."""

    # "ray://head:10001" (Ray Client), "head:6379", "auto"; left out: a local Ray on this host.
    # Never a secret: it is logged and refused when it carries credentials.
    address: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip() or any(c.isspace() for c in v):
            raise ValueError(f"expected a Ray address like ray://head:10001, found {v!r}")
        if "@" in v:  # never echo it: the part before "@" may be a password
            raise ValueError(
                "expected a Ray address without credentials (no user:password@), found one; "
                "the address is logged and must stay secret-free"
            )
        return v


class BackfillSpec(_Model):
    """How history is written."""

    mode: Literal["overwrite", "merge", "append"] = "overwrite"
    # "slice": each slice is visible once committed; "atomic": write-audit-publish
    publish: Literal["slice", "atomic"] = "slice"
    slice_records: Annotated[int, Field(gt=0)] = 250_000
    concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    lag_threshold: Annotated[int, Field(gt=0)] = 100_000
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 5
    # Where slices run: local worker processes, or Ray tasks ([backfill.ray]; seamline[ray]).
    # Not the `seamline run --executor module:function` option (the slice function itself).
    executor: Literal["process", "ray"] = "process"
    ray: RaySpec = RaySpec()
    # Who commits history slices: each worker its own slice, or the coordinator alone, several
    # staged slices per table commit (coordinator/run/committer.py)
    committer: Literal["worker", "coordinator"] = "worker"
    commit_batch_slices: Annotated[int, Field(ge=1, le=10_000)] = 16
    commit_batch_seconds: Annotated[float, Field(gt=0, le=3_600)] = 2.0
    # [[backfill.assert]]: checks on every slice before it commits (coordinator/core/controls)
    asserts: list[AssertSpec] = Field(default=[], alias="assert")


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
    # Slow commits are paced too: the next one starts no sooner than the last one's duration
    # divided by this share (a 4 s Iceberg merge commits at most every 8 s at 0.5).
    max_commit_share: Annotated[float, Field(gt=0, le=1)] = 0.5

    @field_validator("quarantine_topic")
    @classmethod
    def _quarantine_topic(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not _TOPIC.match(v) or v in (".", ".."):
            raise ValueError(f"expected a Kafka topic name ([A-Za-z0-9._-], 1-249), found {v!r}")
        if v.startswith("__"):
            raise ValueError(
                f"expected a topic of your own, found the Kafka-internal topic {v!r} "
                f"(did you mean {v.lstrip('_')!r}?)"
            )
        return v


class StateSpec(_Model):
    """Where the coordinator keeps its state (a URL may hold a password: a secret)."""

    url: SecretStr | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            check_userinfo(v.get_secret_value())
        return v


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
            return _anchor_sqlite(self.state.url.get_secret_value(), self.base_dir)
        return f"sqlite:///{self.base_dir / '.seamline' / f'{self.job_id}.db'}"

    def resolve(self, path: str) -> Path:
        """A path from the job file, relative to the job file's folder."""
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p

    def slice_by(self) -> SliceBySpec | None:
        """The archives' custom slice key (one for all archives, checked at load), or None."""
        return self.history.archive[0].slice_by if self.history.archive else None

    def history_filter(self, *, kafka: bool = False) -> Any:
        """The ``[history] where`` filter as a pyarrow compute expression, or None. For Kafka
        rows of a job with null-value tombstones it keeps every tombstone (its value columns
        are null: the filter cannot judge it, and dropping it would leave its key undeleted)."""
        where = where_expression(self.history.where, self.schema_.arrow_schema())
        marker = self.table.delete_when
        if where is None or not kafka or marker is None or not marker.null_value:
            return where
        return where | pc.field(lineage.DELETED)

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


def _anchor_sqlite(url: str, base_dir: Path) -> str:
    """A relative SQLite path resolved against the job file's folder (like every other path),
    so the same job finds the same store from any working directory."""
    if not url.startswith("sqlite"):
        return url
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        return url  # the state store reports a bad URL
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file:") or Path(db).is_absolute():
        return url
    return parsed.set(database=str(base_dir / db)).render_as_string(hide_password=False)


def parse_job(doc: dict[str, Any], *, base_dir: Path, default_id: str) -> JobSpec:
    """Validate a parsed TOML document. Raises ``ConfigError`` listing every problem."""
    env_values: set[str] = set()
    doc = expand_env(dict(doc), "", env_values)
    job = doc.pop("job", {})
    if not isinstance(job, dict) or set(job) - {"id"}:
        raise ConfigError("key=job: only 'id' is allowed in [job]")
    try:
        spec = JobSpec.model_validate(
            {**doc, "job_id": job.get("id", default_id), "base_dir": base_dir}
        )
    except ValidationError as exc:
        lines = [describe_error(e, JobSpec, env_values) for e in exc.errors()]
        raise ConfigError("invalid job file: " + "; ".join(lines)) from None
    cross_checks(spec)
    return spec


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
