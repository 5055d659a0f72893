"""Plumbing every stage uses: atomic file writes and checkpoints (io), configs, result files, DDP helpers."""
