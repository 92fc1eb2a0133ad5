"""Apache Iceberg tables (pyiceberg): history slice writer and live appender."""
