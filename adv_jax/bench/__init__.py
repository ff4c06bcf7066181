"""Benchmarks that train (or load) models and time the library's stages; reports read their
JSON. certify: the certified bounds and the bracket against the attack, idle and beside busy
processes (results/bench_certify.md)."""
