"""Small helpers below every other package: atomic file writes (io.py), peak FLOP/s (flops.py)."""
