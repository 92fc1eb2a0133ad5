"""Shared test set-up. The fixtures (kafka_broker, kafka_bootstrap, kafka_topic,
iceberg_catalog, lance_uri) come from seamline's pytest plugin, coordinator/testing/pytest_plugin.py,
loaded through its ``pytest11`` entry point."""
