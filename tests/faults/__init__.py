"""Fault-injection helpers (HTTP proxy) for the dimse-bridge test suite."""
