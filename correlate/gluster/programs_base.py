"""The shapes every program module declares: a Program with per-version procedure tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..xdr import Unpacker

Decoder = Callable[[Unpacker], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Procedure:
    name: str
    args: Decoder | None = None       # reads the call body; None: not decoded
    result: Decoder | None = None     # reads an accepted SUCCESS reply body
    status: Decoder | None = None     # reads only its op_ret/op_errno (see layout.status)


@dataclass(frozen=True, slots=True)
class Program:
    number: int
    name: str
    versions: dict[int, dict[int, Procedure]] = field(default_factory=dict)
    expects_reply: bool = True        # False for callbacks, which are never answered


def names_only(names: list[str | None]) -> dict[int, Procedure]:
    """A procedure table with names but no layouts (programs we only label)."""
    return {num: Procedure(n) for num, n in enumerate(names) if n}
