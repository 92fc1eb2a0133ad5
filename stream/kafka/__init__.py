"""All Kafka client access: the one client builder, offset queries, the bounded range reader, the dead-letter topic."""
