"""Fleets of simulated devices, for tests, demos and benchmarks."""
