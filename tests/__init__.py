"""Seamline test suite."""
