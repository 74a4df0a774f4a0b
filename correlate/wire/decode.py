"""A capture (file or stream) -> wire events: frames -> TCP tracker -> RPC sink."""
from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from typing import BinaryIO

from ..diagnostics import Diagnostics
from .capture import open_capture, open_capture_stream
from .rpc import RpcSink
from .tcp import TcpTracker


def source_name(path: str) -> str:
    return "stdin" if path == "-" else os.path.basename(path)


def decode_capture(path: str, source: str | None = None, *, host: str | None = None,
                   diag: Diagnostics | None = None, fileobj: BinaryIO | None = None,
                   details: bool | Collection[str] = True,
                   details_later: bool = False,
                   skip: Callable[[int], bool] | None = None, keylog=None) -> Iterator[dict]:
    """Yield the wire events of one capture, in capture order, as packets are read.
    details=False leaves out RPC credentials, args and results (and the time to decode them);
    a collection of procedure names keeps them for those only; details_later lets the others
    be decoded later, for evidence (RpcSink).

    Every event carries `frame` (the packet that completed it) so renderings can point back
    into the capture. Damage is counted in `diag`, never raised past the header check.
    skip(time_ns) -> True leaves a packet out, counted (a live capture catching up: correlate/sources/lag.py).
    keylog (tls_keys.KeyLog): TLS connections it has keys for are decrypted and decoded."""
    source = source or source_name(path)
    diag = diag or Diagnostics(source)
    frames = open_capture_stream(fileobj, source, diag) if fileobj is not None else open_capture(path, diag)
    sink = RpcSink(source, diag, details=details, details_later=details_later, keylog=keylog)
    tracker = TcpTracker(source, sink, diag)
    for frame in frames:
        if skip is not None and skip(frame.time_ns):
            diag.skip("packets skipped to catch up with the live capture", f"packet {frame.number}")
            continue
        events = tracker.feed(frame)
        for ev in events:
            ev.setdefault("frame", frame.number)
            if host:
                ev["host"] = host
            yield ev
    for ev in tracker.finish():
        if host:
            ev["host"] = host
        yield ev
