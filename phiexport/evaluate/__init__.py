"""Evaluate stage: score packages against the torch reference on held-out text."""
