"""The loop every struct reader of a Gluster layout runs, over the layout's plan.

layout.struct turns a layout (data) into a plan once: runs of fixed-size fields read with one
precompiled Struct each, and the other readers called in between. This module is small and
compiled with the per-packet core (setup.py), so reading arguments and results runs as C
without generating code per layout.
"""
from __future__ import annotations

from ..errors import DecodeError

RUN, FIELD, MERGE = 0, 1, 2     # step kinds: fixed-size run, one reader, a reader merged in


class StructReader:
    """A reader for one layout: steps are (kind, Struct or reader, names, conversions).
    On a DecodeError it re-reads with `slow` (field by field) for the exact message."""
    __slots__ = ("steps", "slow")

    def __init__(self, steps: tuple, slow):
        self.steps = steps
        self.slow = slow

    def __call__(self, u) -> dict:
        start = u.pos
        out = {}
        try:
            for kind, what, names, convs in self.steps:
                if kind == RUN:
                    values = u.unpack_run(what)
                    for i in range(len(names)):
                        name = names[i]
                        if name is not None:          # "_" fields are read, not kept
                            conv = convs[i]
                            out[name] = values[i] if conv is None else conv(values[i])
                elif kind == FIELD:
                    value = what(u)
                    if names is not None:
                        out[names] = value
                else:
                    out.update(what(u))
        except DecodeError:
            u.pos = start
            return self.slow(u)
        return out
