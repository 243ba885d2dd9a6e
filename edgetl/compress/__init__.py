"""Compression stages: teacher→student distillation, structured pruning, quantization-aware training."""
