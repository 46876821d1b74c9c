"""The Waluigi test: flip doses against alignment strength and the antipode's presence (`waluigi resilience`)."""
