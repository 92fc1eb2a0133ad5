"""In-memory and in-thread implementations of seamline's ports, for fast unit tests."""
