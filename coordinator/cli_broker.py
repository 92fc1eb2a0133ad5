"""``seamline broker start|status|stop`` (placeholder until the broker module lands)."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Add the ``broker`` commands to ``group``."""

    @group.group()
    def broker() -> None:
        """Run a local Apache Kafka broker (KRaft) for development and tests."""
