"""In-memory and in-thread implementations of seamline's ports for fast unit tests.

Each fake is held to the same behaviour as the real adapters by the contract suites
(``tests/contract``), which run them next to Iceberg and Lance.
"""
