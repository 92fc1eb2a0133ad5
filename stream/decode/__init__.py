"""Record decoding: raw Kafka records into Arrow rows with lineage, identically for live and history."""
