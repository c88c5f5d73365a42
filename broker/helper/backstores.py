"""The numbers of LIO's backstores (the HBA directories `core/<kind>_<N>` in configfs), kept by the helper.

rtslib-fb numbers a new backstore itself when not given a number: it builds the set of every number in use
and counts up from 0 to the first gap, a cost that grows with every target (a cold login at 5,000 targets
took 1.48x one at 10). `BackstoreNumbers` reads configfs once (one listing of `core/` and of each HBA),
then notes what the helper makes and removes: a lookup is a dict lookup and a new number comes from a heap
of the gaps and a counter, whatever the number of targets. Needs no rtslib-fb: lio.py passes the numbers.
"""

from __future__ import annotations

import heapq
from pathlib import Path


class BackstoreNumbers:
    def __init__(self, core: Path) -> None:
        self.core = core
        self._numbers: dict[tuple[str, str], int] | None = None  # (kind, storage object) -> N
        self._gaps: dict[str, list[int]] = {}  # per kind, a heap of free numbers below its counter
        self._next: dict[str, int] = {}

    def forget(self) -> None:
        """Read configfs again at the next use (after LIO was changed behind the helper's back)."""
        self._numbers = None

    def _load(self) -> dict[tuple[str, str], int]:
        if self._numbers is None:
            numbers: dict[tuple[str, str], int] = {}
            used: dict[str, set[int]] = {}
            for hba in self.core.glob("*_*"):
                kind, _, number = hba.name.rpartition("_")
                if not number.isdigit():
                    continue
                used.setdefault(kind, set()).add(int(number))  # an empty HBA directory holds its number too
                for child in hba.iterdir():
                    if child.is_dir():
                        numbers[(kind, child.name)] = int(number)
            self._next = {kind: max(taken) + 1 for kind, taken in used.items()}
            self._gaps = {kind: sorted(set(range(self._next[kind])) - taken) for kind, taken in used.items()}
            self._numbers = numbers
        return self._numbers

    def of(self, kind: str, name: str) -> int | None:
        """The number of the storage object `name`'s backstore, or None if it has none."""
        return self._load().get((kind, name))

    def take(self, kind: str, name: str) -> int:
        """A number no backstore of `kind` has, noted as `name`'s: the lowest gap, else one past the highest."""
        numbers = self._load()
        gaps = self._gaps.setdefault(kind, [])
        number = heapq.heappop(gaps) if gaps else self._next.get(kind, 0)
        self._next[kind] = max(self._next.get(kind, 0), number + 1)
        numbers[(kind, name)] = number
        return number

    def release(self, kind: str, name: str) -> None:
        """Note that `name`'s backstore was removed: its number is free again. Unknown names are ignored."""
        numbers = self._load()
        number = numbers.pop((kind, name), None)
        if number is not None:
            heapq.heappush(self._gaps[kind], number)
