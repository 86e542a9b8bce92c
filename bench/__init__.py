"""Benchmarks of gemma-operator (see docs/benchmarks.md)."""
