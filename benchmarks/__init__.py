"""Benchmarks: scripts that measure what the project claims (see README.md)."""
