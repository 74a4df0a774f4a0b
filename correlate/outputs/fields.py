"""Chosen event fields as tab-separated lines, like `tshark -T fields -e ...`.

A field is an event key (`xid`, `procedure`, `time_ns`) or a dotted path into a nested one
(`args.path`, `result.op_ret`, `cred.uid`). A missing field prints as an empty column; text
is passed through `safe_text` and tabs are escaped, so a line always has one column per field.
"""
from __future__ import annotations

from .terminal import safe_text
from ..events import to_json

# The keys of the events decode prints (docs/events.md): a field must start with one of them.
EVENT_KEYS = frozenset({
    "time_ns", "layer", "kind", "source", "host", "src", "dst", "conn", "frame",
    "handshake_ns", "reason", "icmp_type", "icmp_code", "icmp_from", "attempts", "waited_ns", "by",
    "xid", "program", "program_num", "version", "procedure", "procedure_num", "cred", "args",
    "reply_status", "accept_status", "reject_status", "auth_status", "op_ret", "op_errno",
    "errno_name", "result", "call_time_ns", "latency_ns", "mismatch", "payload_bytes",
    "decode_error",
})
NESTED = ("args", "result", "cred", "mismatch")
# Common names inside args/result, offered when one is given without its prefix.
COMMON_NESTED = ("path", "bname", "name", "gfid", "pargfid", "atime", "atime_nsec", "mtime",
                 "mtime_nsec", "valid_flags", "fd", "offset", "size", "flags", "mode", "brick",
                 "port", "dict", "key")

# Event keys that need the RPC credential or body decoded (the decoder can skip that work;
# a reply's op_ret, op_errno and errno_name are read either way).
DETAIL_KEYS = frozenset({"cred", "args", "result", "decode_error"})
MAX_VALUE = 4096


def parse_fields(spec: str) -> list[tuple[str, ...]]:
    """"xid,args.path" -> [("xid",), ("args", "path")]; ValueError on an empty name."""
    fields = []
    for name in spec.split(","):
        name = name.strip()
        parts = tuple(name.split("."))
        if not name or not all(parts):
            raise ValueError(f"bad field name {name!r} in {spec!r}")
        if parts[0] not in EVENT_KEYS:
            hint = ""
            if parts[0] in COMMON_NESTED:
                hint = f" (did you mean args.{name} or result.{name}?)"
            raise ValueError(f"unknown field {name!r}{hint}. Valid fields: "
                             f"{', '.join(sorted(EVENT_KEYS - set(NESTED)))}; and inside "
                             f"{', '.join(NESTED)} by a dotted name, such as "
                             f"{', '.join('args.' + n for n in COMMON_NESTED[:8])}, "
                             f"result.op_ret, cred.pid (docs/events.md)")
        fields.append(parts)
    if not fields:
        raise ValueError("no fields given")
    return fields


def needs_details(fields: list[tuple[str, ...]]) -> bool:
    return any(path[0] in DETAIL_KEYS for path in fields)


def _value(ev: dict, path: tuple[str, ...]):
    value = ev
    for key in path:
        if type(value) is not dict:
            return None
        value = value.get(key)
    return value


def _text(value) -> str:
    if value is None:
        return ""
    if type(value) is int:
        return str(value)
    if isinstance(value, (dict, list)):
        value = to_json(value)       # ASCII, escaped: safe as it is
    return safe_text(value, MAX_VALUE).replace("\t", "\\t")


def format_fields(ev: dict, fields: list[tuple[str, ...]]) -> str:
    # ints (most fields) are printed without a call to _text: a tenth of decode --fields
    values = [ev.get(path[0]) if len(path) == 1 else _value(ev, path) for path in fields]
    return "\t".join([str(v) if type(v) is int else _text(v) for v in values])
