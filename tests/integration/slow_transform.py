"""A live transform that takes one second per batch, for the commit-pacing test (no tests here).

The live consumer times a commit from taking the batch to its outcome, transform included, so
this makes every live commit of a job that names it take at least a second.
"""

from __future__ import annotations

import time

import pyarrow as pa


def slow(table: pa.Table) -> pa.Table:
    """The batch unchanged, a second later."""
    time.sleep(1.0)
    return table
