"""How a job file's text is read: ``${NAME}`` expansion, and one clear line per invalid key
that never echoes a secret (used by :mod:`coordinator.core.jobspec`)."""

from __future__ import annotations

import difflib
import os
import re
from typing import Any

from pydantic import BaseModel

from coordinator.core.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

#: Keys whose values are never echoed back in an error (they may hold credentials).
SECRET_KEYS = (
    "state",
    "table.catalog_uri",
    "table.catalog_properties",
    "table.catalog.uri",
    "table.catalog.credential",
    "table.catalog.token",
    "table.catalog.properties",
    "table.storage.access_key_id",
    "table.storage.secret_access_key",
    "table.storage.session_token",
    "stream.security",
    "stream.avro.registry_url",
)
SHOWN_MAX = 80


def check_userinfo(url: str) -> None:
    """Refuse a URL whose password holds an unencoded ``@`` (or ``/``) before the host.

    Such a URL parses with part of the password as the "host", which then reaches errors,
    ``status`` and the state store. The URL itself is never part of the message.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower().startswith(("sqlite", "file")):
        return
    head = re.split(r"[?#]", rest, maxsplit=1)[0]
    ats = head.count("@")
    if ats > 1 or (ats == 1 and "/" in head.split("@", 1)[0]):
        raise ValueError(
            "expected user:password@host with the password percent-encoded; the user or "
            "password holds an unencoded '@' or '/' (write '@' as %40 and '/' as %2F)"
        )


def expand_env(value: Any, where: str, used: set[str] | None = None) -> Any:
    """``value`` with every ``${NAME}`` replaced; the values substituted go into ``used``."""
    used = set() if used is None else used
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else k, used) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]", used) for i, v in enumerate(value)]
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in os.environ:
                raise ConfigError(
                    f"key={where}: environment variable {name} is not set",
                    hint=f"export {name}=... before running seamline",
                )
            if os.environ[name]:
                used.add(os.environ[name])
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


def _secret_key(key: str) -> bool:
    return (
        any(key == k or key.startswith(k + ".") for k in SECRET_KEYS)
        or any(w in key.lower() for w in ("password", "secret", "token", "url", "uri"))
    )


def _shown(key: str, found: Any, env_values: set[str]) -> str:
    """What an error may echo of the value at ``key``: never a secret, never a long table."""
    text = repr(found)
    if _secret_key(key) or any(v in text for v in env_values):
        return "***"
    if isinstance(found, dict | list):
        return f"a {'table' if isinstance(found, dict) else 'list'} of {len(found)} entries"
    return text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 3] + "..."


def describe_error(
    err: Any, model: type[BaseModel], env_values: set[str] | frozenset[str] = frozenset()
) -> str:
    """One line for one pydantic error of a job file (``key=...: ...``), never echoing a
    secret: keys that may hold credentials and values that came from ``${ENV}`` are masked."""
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _allowed_keys(model, loc), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"key={key}: unknown key{hint}"
    if err["type"] == "missing":
        return f"key={key}: required key is missing"
    if err["type"] == "value_error":  # our validators say "expected X, found Y" themselves
        msg = str(err["msg"]).removeprefix("Value error, ")
        if _secret_key(key) or any(v in msg for v in env_values):
            msg = msg.split(", found", 1)[0] + " (value not shown)"
        return f"key={key}: {msg}"
    return f"key={key}: {err['msg']}, found {_shown(key, err.get('input'), set(env_values))}"
