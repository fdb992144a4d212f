"""ldmkit.evaluation."""
