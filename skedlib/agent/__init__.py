"""The host agent: watches its host's issued state and runs tasks with executors.

Public: :class:`Agent` and :class:`AgentConfig`, to embed an agent in a process of your
own (``skedlib-agent`` is one); the modules of this package are internal. It is a
subpackage of its own, not part of ``import skedlib``, because it loads the process
tooling (psutil, executors) that schedulers and plugins do not need."""

from skedlib.agent.agent import Agent, AgentConfig, default_state_dir

__all__ = ["Agent", "AgentConfig", "default_state_dir"]
