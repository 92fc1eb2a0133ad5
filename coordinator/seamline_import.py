"""Shipped as the ``seamline`` module (see ``pyproject.toml``): forwards to :mod:`coordinator.api`.

A copy of this file is what ``import seamline`` loads, in wheels and editable installs alike,
so it stays a one-line forwarder and the API itself lives (and changes) in ``coordinator.api``.
"""

from coordinator.api import *  # noqa: F403
from coordinator.api import __all__ as __all__
from coordinator.api import __version__ as __version__
