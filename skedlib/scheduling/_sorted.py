"""A sorted list of keys that stays cheap to update at 100k keys and more.

A plain sorted list costs a move of half its length for every insertion or removal
(``bisect.insort``): at 100k hosts that is tens of microseconds per placement, more than
the placement itself. :class:`SortedKeys` keeps the keys in blocks of at most
``2 * LOAD`` (the layout of the ``sortedcontainers`` package, reduced to what planning
needs), so an update moves at most one block.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from typing import Generic, TypeVar

_K = TypeVar("_K", tuple[float, str], tuple[int, float, str])

LOAD = 512
"""Keys per block after a split (a block holds at most twice this)."""


class SortedKeys(Generic[_K]):
    """Keys kept sorted; :meth:`add`, :meth:`discard` in O(log n + LOAD)."""

    __slots__ = ("_blocks", "_len", "_maxes")

    def __init__(self, keys: Iterable[_K] = ()) -> None:
        ordered = sorted(keys)
        self._blocks: list[list[_K]] = [ordered[i:i + LOAD]
                                        for i in range(0, len(ordered), LOAD)]
        self._maxes: list[_K] = [b[-1] for b in self._blocks]
        self._len = len(ordered)

    def __len__(self) -> int:
        return self._len

    def add(self, key: _K) -> None:
        """Insert ``key`` (it must not be there already)."""
        blocks, maxes = self._blocks, self._maxes
        self._len += 1
        if not blocks:
            blocks.append([key])
            maxes.append(key)
            return
        i = bisect.bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            blocks[i].append(key)
            maxes[i] = key
        else:
            bisect.insort(blocks[i], key)
        block = blocks[i]
        if len(block) > 2 * LOAD:
            half = block[LOAD:]
            del block[LOAD:]
            blocks.insert(i + 1, half)
            maxes[i] = block[-1]
            maxes.insert(i + 1, half[-1])

    def discard(self, key: _K) -> None:
        """Remove ``key`` when it is there."""
        blocks, maxes = self._blocks, self._maxes
        if blocks and blocks[0][0] == key:  # the head: what a walk by load chose
            i = j = 0
            block = blocks[0]
        else:
            i = bisect.bisect_left(maxes, key)
            if i == len(maxes):
                return
            block = blocks[i]
            j = bisect.bisect_left(block, key)
            if j == len(block) or block[j] != key:
                return
        del block[j]
        self._len -= 1
        if not block:
            del blocks[i]
            del maxes[i]
        else:
            maxes[i] = block[-1]

    def discard_head(self, name: str) -> bool:
        """Remove the smallest key when it is ``name``'s (a key ends with its host's
        name, and a list holds one key per host); True when it did."""
        blocks = self._blocks
        if not blocks:
            return False
        block = blocks[0]
        if block[0][-1] != name:
            return False
        del block[0]
        self._len -= 1
        if not block:
            del blocks[0]
            del self._maxes[0]
        return True

    def head(self) -> _K | None:
        """The smallest key (None when empty)."""
        blocks = self._blocks
        return blocks[0][0] if blocks else None

    @staticmethod
    def smallest(lists: Iterable[SortedKeys[_K]]) -> _K | None:
        """The smallest key of several lists (None when all are empty)."""
        heads = [keys._blocks[0][0] for keys in lists if keys._blocks]
        return min(heads) if heads else None

    def from_(self, key: _K) -> Iterator[_K]:
        """The keys not below ``key``, ascending."""
        blocks, maxes = self._blocks, self._maxes
        i = bisect.bisect_left(maxes, key)
        if i == len(maxes):
            return
        block = blocks[i]
        yield from itertools.islice(block, bisect.bisect_left(block, key), None)
        for b in range(i + 1, len(blocks)):
            yield from blocks[b]

    def descending(self) -> Iterator[_K]:
        """Every key, descending."""
        for block in reversed(self._blocks):
            yield from reversed(block)

    def __iter__(self) -> Iterator[_K]:
        return itertools.chain.from_iterable(self._blocks)
