"""A Kafka broker for tests and the demo: ``KAFKA_BOOTSTRAP``, a container, or a local KRaft broker."""
