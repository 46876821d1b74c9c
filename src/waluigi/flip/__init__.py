"""`waluigi flip`: dose-response sweeps and the flip dose (docs/flip.md)."""
