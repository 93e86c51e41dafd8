"""``skedlib-agent``: not yet implemented in this release."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``skedlib-agent``."""
    print("skedlib-agent: not yet implemented", file=sys.stderr)
    return 2
