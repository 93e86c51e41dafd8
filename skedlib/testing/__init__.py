"""Public test support: the backend conformance suite and helpers for plugin authors.

>>> from skedlib.testing import BackendConformance   # subclass it in a pytest module
"""

from skedlib.testing.conformance import BackendConformance

__all__ = ["BackendConformance"]
