"""Shared test set-up. The fixtures (kafka_broker, kafka_bootstrap, kafka_topic,
iceberg_catalog, lance_uri) come from seamline's pytest plugin, coordinator/testing/pytest_plugin.py,
loaded through its ``pytest11`` entry point."""

from hypothesis import settings

# No per-example deadline: the shared 2-core machine makes timings meaningless, and tests
# must never assert on time.
settings.register_profile("seamline", deadline=None)
settings.load_profile("seamline")
