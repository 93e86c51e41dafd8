"""The scheduler daemon: runs registered Scheduler plugins over the desired state."""
