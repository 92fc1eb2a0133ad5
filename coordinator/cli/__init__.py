"""The ``seamline`` command line: parse, call a service, render. Nothing outside this package imports it."""
