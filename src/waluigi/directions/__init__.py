"""Directions in activations: names, scoped hooks, extraction, steering, monitoring."""
