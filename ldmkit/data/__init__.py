"""ldmkit.data."""
