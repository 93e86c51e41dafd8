"""The host agent: watches its host's issued state and runs tasks with executors."""

from skedlib.agent.agent import Agent, AgentConfig, default_state_dir
from skedlib.agent.health import (
    HealthContext,
    HealthProvider,
    LocalHealthProvider,
    pass_ttl_check,
)

__all__ = [
    "Agent",
    "AgentConfig",
    "HealthContext",
    "HealthProvider",
    "LocalHealthProvider",
    "default_state_dir",
    "pass_ttl_check",
]
