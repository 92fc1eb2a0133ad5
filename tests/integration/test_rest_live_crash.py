"""kill -9 of the live consumer between its commit and its bookkeeping, on the REST catalog.

The live consumer (a real ``seamline live`` process) commits a micro-batch to an Iceberg table
on the session's REST catalog server (its warehouse on the S3 server) and dies by SIGKILL at
``live.after_commit``, before it tells the state store or Kafka; the restarted consumer resumes
from the table's committed offsets. The independent oracle then reads the table directly (a
fresh REST client) against every record in the topic: 0 lost, 0 duplicated, 0 phantom.
"""

from __future__ import annotations

import json
import uuid

import pytest

from backfill.sinks.iceberg.rest_server.local import RestCatalogServer
from backfill.sinks.s3_server.local import S3Server
from coordinator.testing.pytest_plugin import KillAt

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_kill_9_after_a_live_commit_on_the_rest_catalog_is_exactly_once(
    kill_at: KillAt, iceberg_rest_catalog: RestCatalogServer, s3_server: S3Server
) -> None:
    storage = ", ".join(f"{k} = {json.dumps(v)}" for k, v in s3_server.storage().items())
    table = (f'identifier = "crash_{uuid.uuid4().hex[:8]}.orders"\n'
             f'catalog = {{ type = "rest", uri = "{iceberg_rest_catalog.uri}" }}\n'
             f"storage = {{ {storage} }}")  # fmt: skip
    result = kill_at("live.after_commit", "iceberg", "overwrite", seed=3, table=table)
    assert result.died_at == "live.after_commit", result.notes
    assert result.killed_by_sigkill, result.notes
    assert result.report is not None
    assert result.report.anomalies == 0, result.report.to_json()
    assert result.report.table_rows > 0
