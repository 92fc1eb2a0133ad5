"""The Hypothesis profile the suite runs under (tests/conftest.py): failures replayable,
seeds fresh, and a deadline a shared 2-core machine meets with bounded examples."""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

from tests.conftest import PROFILES


def test_every_profile_prints_a_replay_blob() -> None:
    for name in PROFILES:
        assert settings.get_profile(name).print_blob is True


def test_the_ci_profile_suits_a_shared_machine() -> None:
    ci = settings.get_profile("ci")
    assert ci.deadline == timedelta(seconds=5)
    assert ci.derandomize is False
    assert HealthCheck.too_slow in ci.suppress_health_check


def test_the_active_profile_is_the_one_named_by_the_environment() -> None:
    name = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    active = settings.default
    assert active is not None
    assert active.deadline == settings.get_profile(name).deadline
    assert active.print_blob is True
