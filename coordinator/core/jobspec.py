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


#: Catalog types ``pyiceberg.catalog.load_catalog`` knows, and the URI schemes each takes
#: (``None``: the type takes no ``uri``; its endpoint goes in ``properties``).
CATALOG_URI_SCHEMES: dict[str, tuple[str, ...] | None] = {
    "sql": ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql"),
    "rest": ("http", "https"),
    "hive": ("thrift",),
    "glue": None,
    "dynamodb": None,
    "bigquery": None,
    "in-memory": None,
}
#: Types that cannot work without a ``uri``.
_CATALOG_NEEDS_URI = frozenset({"sql", "rest", "hive"})


class CatalogSpec(_Model):
    """``[table] catalog = { type = ..., uri = ..., ... }``, handed to ``load_catalog``.

    Every value that can carry a credential (``uri``, ``credential``, ``token``, extra
    ``properties``) is a secret: read only where the catalog is opened, masked elsewhere.
    """

    type: str = "sql"
    name: str = "seamline"
    uri: SecretStr | None = None
    warehouse: str | None = None
    credential: SecretStr | None = None  # REST OAuth2 client_id:client_secret
    token: SecretStr | None = None  # REST bearer token
    properties: dict[str, SecretStr] = {}  # any other pyiceberg catalog property

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        if v not in CATALOG_URI_SCHEMES:
            close = difflib.get_close_matches(v, list(CATALOG_URI_SCHEMES), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"expected one of {sorted(CATALOG_URI_SCHEMES)}, found {v!r}{hint}")
        return v

    def check_uri(self) -> None:
        """Raise ``ConfigError`` when ``uri`` is missing or has a scheme this type cannot take."""
        schemes = CATALOG_URI_SCHEMES[self.type]
        if self.uri is None:
            if self.type in _CATALOG_NEEDS_URI:
                raise ConfigError(f"key=table.catalog.uri: catalog type {self.type!r} needs a uri",
                                  hint=_uri_hint(self.type))
            return
        scheme = uri_scheme(self.uri.get_secret_value())
        if schemes is None:
            raise ConfigError(
                f"key=table.catalog.uri: catalog type {self.type!r} takes no uri, found one",
                hint="put the endpoint in [table.catalog.properties] (e.g. glue.endpoint)")
        if scheme.split("+", 1)[0] not in schemes:
            raise ConfigError(
                f"key=table.catalog.uri: catalog type {self.type!r} expected a "
                f"{'/'.join(s + ':' for s in schemes)} URI, found scheme {scheme or '(none)'!r}",
                hint=_uri_hint(self.type))

    def load_properties(self, warehouse: str | None) -> dict[str, str]:
        """The properties for ``load_catalog`` (secrets revealed: never log the result)."""
        props = {k: v.get_secret_value() for k, v in self.properties.items()}
        props["type"] = self.type
        for key, value in (("uri", self.uri), ("credential", self.credential),
                           ("token", self.token)):
            if value is not None:
                props[key] = value.get_secret_value()
        if warehouse is not None:
            props["warehouse"] = warehouse
        return props


def uri_scheme(uri: str) -> str:
    """The lower-case scheme of ``uri`` ('' when it has none)."""
    head, sep, _ = uri.partition(":")
    return head.lower() if sep and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", head) else ""


def _uri_hint(kind: str) -> str:
    examples = {"sql": "uri = \"sqlite:///catalog.db\" or \"postgresql://user@host/db\"",
                "rest": "uri = \"http://127.0.0.1:8181\"", "hive": "uri = \"thrift://host:9083\""}
    return examples.get(kind, "see pyiceberg's catalog documentation")


class StorageSpec(_Model):
    """``[table.storage]``: S3-compatible object storage for the warehouse or dataset.

    Mapped onto pyiceberg's ``s3.*`` FileIO properties (Iceberg tables only for now).
    """

    endpoint: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    path_style: bool = False

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and uri_scheme(v) not in ("http", "https"):
            raise ValueError("expected an http:// or https:// endpoint")
        return v

    def iceberg_properties(self) -> dict[str, str]:
        """pyiceberg FileIO properties (secrets revealed: never log the result)."""
        names = {"endpoint": "s3.endpoint", "region": "s3.region",
                 "access_key_id": "s3.access-key-id",
                 "secret_access_key": "s3.secret-access-key",
                 "session_token": "s3.session-token"}
        props = {names[k]: v for k, v in self._values().items()}
        if self.path_style:
            props["s3.force-virtual-addressing"] = "false"
            props["s3.path-style-access"] = "true"
        return props

    def _values(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key in ("endpoint", "region", "access_key_id", "secret_access_key", "session_token"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return out


class TableSpec(_Model):
    """Where rows land.

    ``catalog`` is the catalog (any pyiceberg type); the older flat keys ``catalog_uri``,
    ``catalog_name`` and ``catalog_properties`` still work and mean a SQL catalog.
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
    partition_by: Literal["day", "hour", "none"] = "day"

    def catalog_spec(self) -> CatalogSpec | None:
        """The catalog, from ``catalog`` or the legacy flat keys (a SQL catalog)."""
        if self.catalog is not None:
            return self.catalog
        if self.catalog_uri is None:
            return None
        return CatalogSpec(type="sql", name=self.catalog_name, uri=self.catalog_uri,
                           properties=self.catalog_properties)

    def catalog_warehouse(self) -> str | None:
        """The warehouse: ``catalog.warehouse``, else ``warehouse``."""
        if self.catalog is not None and self.catalog.warehouse is not None:
            return self.catalog.warehouse
        return self.warehouse

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


def _is_secret_key(key: str) -> bool:
    secretish = ("password", "secret", "url", "uri", "credential", "token", "access_key",
                 "properties")
    return any(word in key for word in secretish)


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
    shown = "***" if _is_secret_key(key) else repr(found)
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
    _check_catalog(spec.table)
    if spec.table.format == "lance" and not spec.table.uri:
        raise ConfigError("key=table.uri: lance needs a dataset path or URI")
    if spec.backfill.mode == "merge" and not spec.table.key:
        raise ConfigError(
            "key=table.key: merge mode needs key columns",
            hint='set table.key = ["order_id"] or use mode = "overwrite"',
        )


def _check_catalog(table: TableSpec) -> None:
    legacy = [k for k in ("catalog_uri", "catalog_properties", "catalog_name")
              if k in table.model_fields_set]
    if table.catalog is not None and legacy:
        raise ConfigError(
            f"key=table.{legacy[0]}: expected either 'catalog' or the older flat catalog keys, "
            "found both", hint="move it into table.catalog (uri, name, properties)")
    if table.format != "iceberg":
        if table.storage != StorageSpec():
            raise ConfigError("key=table.storage: expected an iceberg table, found format 'lance'",
                              hint="Lance datasets on object storage are not supported yet")
        return
    spec = table.catalog_spec()
    if not table.identifier or spec is None:
        raise ConfigError("key=table: iceberg needs 'identifier' and 'catalog_uri'",
                          hint='or catalog = { type = "rest", uri = "http://..." }')
    spec.check_uri()


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
