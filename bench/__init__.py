"""Benchmarks of scheduler-svc: scripts that print a table. See bench/README.md."""
