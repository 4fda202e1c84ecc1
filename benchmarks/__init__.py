"""Benchmarks of girder (see README.md)."""
