"""ldmkit.models."""
