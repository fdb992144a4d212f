"""ldmkit.training."""
