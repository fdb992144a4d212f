"""ldmkit.tasks."""
