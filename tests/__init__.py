"""The dimse-bridge test suite."""
