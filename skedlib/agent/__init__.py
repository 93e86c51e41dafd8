"""The host agent: watches its host's issued state and runs tasks with executors."""

from skedlib.agent.agent import Agent, AgentConfig, default_state_dir

__all__ = ["Agent", "AgentConfig", "default_state_dir"]
