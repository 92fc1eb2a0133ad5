"""History sources: archive files and Kafka offset ranges, as decoded Arrow tables."""
