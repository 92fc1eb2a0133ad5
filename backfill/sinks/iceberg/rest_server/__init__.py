"""A local Apache Iceberg REST catalog server (Iceberg's own fixture, from Maven jars)."""
