"""Health: checks as a task declares them, and the providers that run or register them.

- :mod:`skedlib.health.checks`: resolving a task's checks (``$PROVIDED_PORT``, defaults)
  and running one (http, tcp, script);
- :mod:`skedlib.health.provider`: the :class:`HealthProvider` contract the agent drives,
  :class:`LocalHealthProvider` (the agent runs the checks itself) and
  :func:`pass_ttl_check`.

Third-party providers (such as the Consul plugin's) implement the same contract; they
import it from the front door, ``skedlib``.
"""

from skedlib.health.checks import CheckResult, ResolvedCheck, resolve_checks, run_check
from skedlib.health.provider import (
    DEFAULT_FAILURE_THRESHOLD,
    HealthContext,
    HealthProvider,
    LocalHealthProvider,
    check_env,
    pass_ttl_check,
)

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "CheckResult",
    "HealthContext",
    "HealthProvider",
    "LocalHealthProvider",
    "ResolvedCheck",
    "check_env",
    "pass_ttl_check",
    "resolve_checks",
    "run_check",
]
