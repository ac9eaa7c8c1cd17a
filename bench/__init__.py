"""Benchmarks: scripts that print figures and compare with a baseline in the same run."""
