"""Kept only for ``test_consul_specific.py``, which imports ``sked_fails`` from here: the
helper lives in :mod:`tests.harness.cli`. Delete this file once that import is changed."""

from __future__ import annotations

from tests.harness.cli import sked_fails

__all__ = ["sked_fails"]
