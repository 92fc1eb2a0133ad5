"""``[table] catalog`` and ``[table.storage]`` of the job file: any Iceberg catalog, S3 storage.

``catalog = { type = "rest", uri = "http://...", ... }`` is handed to pyiceberg's
``load_catalog`` (validated here first: an unknown type or a URI scheme the type cannot take is
a config error naming the key). ``[table.storage]`` describes S3-compatible object storage once,
mapped onto pyiceberg's ``s3.*`` FileIO properties (Iceberg) and onto object-store options
(Lance). Every value that can carry a credential is a ``SecretStr``: revealed only by the
``*_properties``/``*_options`` methods, whose results are never logged.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from coordinator.core.errors import ConfigError

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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def uri_scheme(uri: str) -> str:
    """The lower-case scheme of ``uri`` ('' when it has none).

    >>> uri_scheme("HTTP://h:1"), uri_scheme("sqlite:///c.db"), uri_scheme("/tmp/x")
    ('http', 'sqlite', '')
    """
    head, sep, _ = uri.partition(":")
    return head.lower() if sep and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", head) else ""


def _uri_hint(kind: str) -> str:
    examples = {
        "sql": 'uri = "sqlite:///catalog.db" or "postgresql://user@host/db"',
        "rest": 'uri = "http://127.0.0.1:8181"',
        "hive": 'uri = "thrift://host:9083"',
    }
    return examples.get(kind, "see pyiceberg's catalog documentation")


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
        """Raise ``ConfigError`` when ``uri`` is missing or has a scheme this type cannot take
        (the URI itself is never part of the message: it may hold a password)."""
        schemes = CATALOG_URI_SCHEMES[self.type]
        if self.uri is None:
            if self.type in _CATALOG_NEEDS_URI:
                raise ConfigError(
                    f"key=table.catalog.uri: catalog type {self.type!r} needs a uri",
                    hint=_uri_hint(self.type),
                )
            return
        scheme = uri_scheme(self.uri.get_secret_value())
        if schemes is None:
            raise ConfigError(
                f"key=table.catalog.uri: catalog type {self.type!r} takes no uri, found one",
                hint="put the endpoint in [table.catalog.properties] (e.g. glue.endpoint)",
            )
        if scheme.split("+", 1)[0] not in schemes:
            raise ConfigError(
                f"key=table.catalog.uri: catalog type {self.type!r} expected a "
                f"{'/'.join(s + ':' for s in schemes)} URI, found scheme {scheme or '(none)'!r}",
                hint=_uri_hint(self.type),
            )

    def load_properties(self, warehouse: str | None) -> dict[str, str]:
        """The properties for ``load_catalog`` (secrets revealed: never log the result)."""
        props = {k: v.get_secret_value() for k, v in self.properties.items()}
        props["type"] = self.type
        for key, value in (
            ("uri", self.uri),
            ("credential", self.credential),
            ("token", self.token),
        ):
            if value is not None:
                props[key] = value.get_secret_value()
        if warehouse is not None:
            props["warehouse"] = warehouse
        return props


class StorageSpec(_Model):
    """``[table.storage]``: S3-compatible object storage for the warehouse or the dataset.

    Iceberg: pyiceberg's ``s3.*`` FileIO properties (the catalog's warehouse or the table
    location is an ``s3://`` URI). Lance: the object-store options of an ``s3://`` dataset URI.
    """

    endpoint: str | None = None
    region: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    path_style: bool = False
    # Lance: "host" serialises the dataset's commits through a lock file on this host, for
    # S3-compatible servers whose conditional put is not atomic (S3Proxy); every writer of the
    # dataset must then run on this host. Amazon S3, MinIO, R2 and GCS need "none".
    commit_lock: Literal["none", "host"] = "none"

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and uri_scheme(v) not in ("http", "https"):
            raise ValueError("expected an http:// or https:// endpoint")
        return v

    def is_set(self) -> bool:
        """True when the section says anything (an empty section means the default chain)."""
        return self != StorageSpec()

    def _values(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key in ("endpoint", "region", "access_key_id", "secret_access_key", "session_token"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.get_secret_value() if isinstance(value, SecretStr) else value
        return out

    def iceberg_properties(self) -> dict[str, str]:
        """pyiceberg FileIO properties (secrets revealed: never log the result)."""
        names = {
            "endpoint": "s3.endpoint",
            "region": "s3.region",
            "access_key_id": "s3.access-key-id",
            "secret_access_key": "s3.secret-access-key",
            "session_token": "s3.session-token",
        }
        props = {names[k]: v for k, v in self._values().items()}
        if self.path_style:
            props["s3.force-virtual-addressing"] = "false"
            props["s3.path-style-access"] = "true"
        return props

    def lance_options(self) -> dict[str, str]:
        """Lance ``storage_options`` (object_store's S3 keys; secrets revealed: never log)."""
        names = {
            "endpoint": "aws_endpoint",
            "region": "aws_region",
            "access_key_id": "aws_access_key_id",
            "secret_access_key": "aws_secret_access_key",
            "session_token": "aws_session_token",
        }
        opts = {names[k]: v for k, v in self._values().items()}
        if self.endpoint is not None and uri_scheme(self.endpoint) == "http":
            opts["allow_http"] = "true"
        if self.path_style:
            opts["aws_virtual_hosted_style_request"] = "false"
        return opts


__all__ = ["CATALOG_URI_SCHEMES", "CatalogSpec", "StorageSpec", "uri_scheme"]
