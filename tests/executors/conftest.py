"""Fixtures for the executor tests: the agent tests' store, host and ``skedlib-agent``
processes (the ``bash`` executor is tested through a real agent)."""

from __future__ import annotations

from tests.agent.conftest import env

__all__ = ["env"]
