"""Shared test set-up. The fixtures (kafka_broker, kafka_bootstrap, kafka_topic,
iceberg_catalog, lance_uri) come from seamline's pytest plugin, coordinator/testing/pytest_plugin.py,
loaded through its ``pytest11`` entry point.

Hypothesis settings profiles, chosen with ``HYPOTHESIS_PROFILE`` (default ``ci``):

* ``ci``: for a shared 2-core machine. Deadline 5 s per example: unit-tier generators keep
  their examples small (e.g. plans of at most a few thousand slices), so an example that takes
  seconds is a real regression, not load. ``too_slow`` generation is not a failure (load from
  parallel test runs); ``print_blob`` so a failure can be replayed with
  ``@reproduce_failure``; fresh random seeds every run (``derandomize=False``).
* ``dev``: Hypothesis' defaults (200 ms deadline: a slow example shows early) plus
  ``print_blob``.

Huge inputs (e.g. plans of 512 k slices) are measured in ``bench/``, never under a deadline.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings

PROFILES = ("ci", "dev")

settings.register_profile(
    "ci",
    deadline=timedelta(seconds=5),
    print_blob=True,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", print_blob=True)


def _profile() -> str:
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if name not in PROFILES:
        raise pytest.UsageError(
            f"HYPOTHESIS_PROFILE: expected one of {list(PROFILES)}, found {name!r}; "
            "unset it for the default 'ci'"
        )
    return name


settings.load_profile(_profile())
