"""Which bricks hold the only copy of their files and which belong to a replica or disperse
set, from the volfiles the capture shows (GETSPEC replies: `bricks`, `brick_sets`).

A brick in a set is redundant: while it is down or lacks a file (created while it was down,
heal pending) its peers serve the clients, who see no error. A brick in no set holds the
only copy: its trouble is the application's.
"""
from __future__ import annotations

from collections import OrderedDict

MAX_BRICKS = 4096


class Bricks:
    PROCEDURES = frozenset({"GETSPEC"})

    def __init__(self):
        self.in_set: OrderedDict[tuple[str, str], str] = OrderedDict()     # (host, path) -> set
        self.only_copy: OrderedDict[tuple[str, str], str] = OrderedDict()  # (host, path) -> volume
        self.dropped = 0

    def observe_volfile(self, reply: dict) -> None:
        result = reply.get("result") or {}
        bricks = result.get("bricks") if isinstance(result, dict) else None
        if not isinstance(bricks, list):
            return
        args = reply.get("args")
        volume = str((args if isinstance(args, dict) else {}).get("key") or "").lstrip("/")
        members = {}
        sets = result.get("brick_sets")
        for s in sets if isinstance(sets, list) else ():
            for b in (s.get("bricks") or []) if isinstance(s, dict) else ():
                if isinstance(b, list) and len(b) == 2:
                    members[tuple(map(str, b))] = str(s.get("name"))
        for b in bricks:
            if isinstance(b, list) and len(b) == 2:
                b = tuple(map(str, b))
                if b in members:
                    self._put(self.in_set, b, members[b])
                    self.only_copy.pop(b, None)
                else:
                    self._put(self.only_copy, b, volume)

    def seed(self, volumes) -> None:
        """The sets `gluster volume info --xml` describes (volume_xml.Volume records)."""
        for vol in volumes:
            members = {b: name for name, bricks in vol.sets for b in bricks}
            for b in vol.bricks:
                if b in members:
                    self._put(self.in_set, b, members[b])
                else:
                    self._put(self.only_copy, b, vol.name)

    def _put(self, table: OrderedDict, key, value) -> None:
        table.pop(key, None)
        table[key] = value
        if len(table) > MAX_BRICKS:
            table.popitem(last=False)
            self.dropped += 1

    def set_of(self, host: str, path: str) -> str | None:
        """The replica/disperse set a brick belongs to, None when not known to be in one."""
        return self.in_set.get((host, path))

    def is_only_copy(self, host: str, path: str) -> bool:
        return (host, path) in self.only_copy

    def volume_of_only_copy(self, host: str, path: str) -> str | None:
        return self.only_copy.get((host, path))
