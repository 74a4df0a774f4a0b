"""The event contract (docs/events.md): plain dicts, JSON-serializable, one per line.

Every event has `time_ns` (int, ns since the Unix epoch, UTC), `layer`
(wire|probe|log|finding), `kind` and `source`. Dicts keep third-party detectors free of
our classes and make the JSON Lines timeline the same thing as the in-memory stream.
"""
from __future__ import annotations

import json
from typing import Any

SCHEMA = "correlate/1"
LAYERS = ("wire", "probe", "log", "finding")


def make_event(time_ns: int, layer: str, kind: str, source: str, **fields: Any) -> dict:
    ev = {"time_ns": int(time_ns), "layer": layer, "kind": kind, "source": source}
    ev.update(fields)
    return ev


# Key of an event decoded without its RPC details (credentials, args, results) because no
# consumer asked for them: a function that returns the event complete, or a tuple (function,
# arguments...) of plain values (what crosses processes). Never written out.
DETAILS_LATER = "_details_later"


def with_details(ev: dict) -> dict:
    """The event as full decoding makes it (same keys in the same order; keys set after
    decoding, like `frame`, or changed, like `conn` renumbered, as in `ev`); the event itself
    when nothing was left out. For evidence: a finding shows what the user would have seen
    with every detail decoded."""
    complete = ev.get(DETAILS_LATER)
    if complete is None:
        return ev
    full = complete[0](*complete[1:]) if type(complete) is tuple else complete()
    for k, v in ev.items():
        if k != DETAILS_LATER:
            full[k] = v
    return full


def _default(obj: Any):
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


# Built once: json.dumps would build an encoder per call. Events are trees of plain values, so
# the circular-reference bookkeeping is skipped; `default` only runs for the odd non-JSON type.
_encoder = json.JSONEncoder(default=_default, separators=(",", ":"), ensure_ascii=True,
                            check_circular=False)
# The C encoder that JSONEncoder.encode itself ends in, made once instead of per event.
_c_encode = (json.encoder.c_make_encoder(None, _default, json.encoder.encode_basestring_ascii,
                                         None, ":", ",", False, False, True)
             if json.encoder.c_make_encoder is not None else None)


def to_json(ev: dict) -> str:
    """One JSON line. Non-ASCII and control characters are escaped by json itself."""
    if _c_encode is not None and type(ev) is dict:
        return "".join(_c_encode(ev, 0))
    return _encoder.encode(ev)


def header_line(**info: Any) -> str:
    """The first line of a saved timeline: says which schema the lines follow."""
    return to_json({"schema": SCHEMA, "kind": "timeline.header", **info})
