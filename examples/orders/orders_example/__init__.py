"""The example project's own job code: the transform its seamline job names."""
