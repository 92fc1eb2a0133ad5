"""User code named in a job file as ``module:function`` (transforms, custom checks)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from coordinator.core.errors import ConfigError


def load_function(ref: str, key: str) -> Callable[..., Any]:
    """Import ``module:function`` named by job key ``key``; a ``ConfigError`` naming the key
    when the module cannot be imported or has no such callable."""
    module_name, _, func_name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"key={key}: cannot import module {module_name!r} ({exc})",
            hint="check the module is on PYTHONPATH or installed in the environment",
        ) from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"key={key}: module {module_name!r} has no function {func_name!r}")
    return func  # type: ignore[no-any-return]
