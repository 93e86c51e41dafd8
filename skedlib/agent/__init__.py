"""The host agent: watches its host's issued state and runs tasks with executors.

Public: :class:`Agent` and :class:`AgentConfig`, to embed an agent in a process of your
own (``skedlib-agent`` is one); the modules of this package are internal. It is a
subpackage of its own, not part of ``import skedlib``, because it loads the process
tooling (psutil, executors) that schedulers and plugins do not need."""

# imported on first use: importing one of its modules (a job worker needs a few) does
# not load the agent with it
from typing import TYPE_CHECKING

from skedlib.plugins import lazy_attributes

if TYPE_CHECKING:
    from skedlib.agent.agent import Agent, AgentConfig
    from skedlib.agent.hostinfo import default_state_dir

__all__ = ["Agent", "AgentConfig", "default_state_dir"]

__getattr__ = lazy_attributes(__name__, {
    "Agent": "skedlib.agent.agent",
    "AgentConfig": "skedlib.agent.agent",
    "default_state_dir": "skedlib.agent.hostinfo",
})
