"""Targets (measured: cpu, cpu-ort, cuda; simulated: sim/), measured latency tables and their files, the fingerprint."""
