"""A local S3-compatible server (S3Proxy on a filesystem backend, from Maven jars)."""
