"""The host agent: watches its host's issued state and runs tasks with executors."""
