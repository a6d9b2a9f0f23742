"""Targets, measured latency tables and the hardware fingerprint."""
