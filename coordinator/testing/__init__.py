"""Fixtures for users' own integration tests (the ``seamline`` pytest plugin)."""
