"""Latency measurement of loaded runners. Torch-free."""
