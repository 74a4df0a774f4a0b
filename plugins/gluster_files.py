"""What the data-loss detectors route on: the replies that name a file and SETVOLUME.

File names by gfid, each connection's client process and the call a reply answers are the
shared state's (`state.files`, `state.clients`, `state.calls`: correlate.state); these names
stay for the detectors that still wake on those events.
"""
from __future__ import annotations

from correlate.state.files import NAMING, ROOT_GFID, stat_of  # noqa: F401

DETAILS = frozenset(NAMING | {"SETVOLUME"})
