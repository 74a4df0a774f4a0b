"""The GlusterFS Handshake program (14398633, version 2): SETVOLUME, GETSPEC, ...

Procedures: enum gf_handshake_procnum (protocol-common.h). Layouts: gf_setvolume_req/rsp,
gf_getspec_req/rsp and friends in glusterfs3-xdr.x; this program still carries v3 dicts
(dict_serialize() inside `opaque dict<>`), the reader falls back to gfx_dict if that fails.
"""
from __future__ import annotations

from ..xdr import Unpacker
from . import dicts, volfile
from .layout import decode, i32, status, string, u32
from .programs_base import Procedure, Program

PROGRAM = 14398633
SPEC_PREFIX = 120          # characters of a volfile kept in the GETSPEC result
MAX_SPEC = 64 << 20        # a volfile larger than this is not plausible

RET = [("op_ret", i32), ("op_errno", i32)]


# Every client of a volume fetches the same volfile (each mount, each brick connection's
# reconnect): its parse is kept by content, a few volumes' worth (at most 4 MiB of keys).
_PARSED: dict[bytes, tuple] = {}
MAX_PARSED = 64
MAX_PARSED_SPEC = 64 << 10      # larger volfiles (hundreds of bricks) are parsed each time


def _parsed(raw: bytes) -> tuple:
    """(prefix, sets, bricks, ping_timeout) of a volfile's text."""
    kept = len(raw) <= MAX_PARSED_SPEC
    found = _PARSED.get(raw) if kept else None
    if found is None:
        blocks = volfile.blocks(raw.decode("utf-8", "replace"))
        found = (dicts.render(raw[:SPEC_PREFIX]), tuple(volfile.sets_of(blocks)),
                 *volfile.clients_of(blocks))
        if kept:
            if len(_PARSED) >= MAX_PARSED:
                _PARSED.clear()     # (one step: decoding threads may share it)
            _PARSED[raw] = found
    return found


def spec(u: Unpacker) -> dict:
    """A volfile: its size, a short prefix, and its replica/disperse sets (which bricks are
    peers), not the whole text."""
    raw = u.opaque("spec", MAX_SPEC)
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    prefix, sets, bricks, ping_timeout = _parsed(raw)
    out = {"spec_size": len(raw), "spec_prefix": prefix}
    if sets:     # lists made afresh: each event owns its own
        out["brick_sets"] = [{"name": s.name, "type": s.kind,
                              "bricks": [[host, path] for host, path in s.bricks]}
                             for s in sets]
    if bricks:
        out["bricks"] = [[host, path] for host, path in bricks]
    if ping_timeout is not None:
        out["ping_timeout"] = ping_timeout
    return out


def _layout(lay):
    return lambda u: decode(u, lay)


def _procedure(name: str, args, result) -> Procedure:
    return Procedure(name, _layout(args), _layout(result), status(result))


SETVOLUME = _procedure("SETVOLUME", [("dict", dicts.dict_any)],
                       RET + [("dict", dicts.dict_any)])
GETSPEC = _procedure("GETSPEC", [("flags", u32), ("key", string), ("xdata", dicts.dict_any)],
                     RET + [("*spec", spec), ("xdata", dicts.dict_any)])

VERSION_2 = {
    0: _procedure("NULL", [], []),
    1: SETVOLUME,
    2: GETSPEC,
    3: Procedure("PING"),
    4: _procedure("SET_LK_VER", [("uid", string), ("lk_ver", i32)],
                  RET + [("lk_ver", i32)]),
    5: _procedure("EVENT_NOTIFY", [("op", i32), ("dict", dicts.dict_any)],
                  RET + [("dict", dicts.dict_any)]),
    6: _procedure("GET_VOLUME_INFO", [("dict", dicts.dict_any)],
                  RET + [("op_errstr", string), ("dict", dicts.dict_any)]),
    7: _procedure("GET_SNAPSHOT_INFO", [("dict", dicts.dict_any)],
                  RET + [("op_errstr", string), ("dict", dicts.dict_any)]),
}

HANDSHAKE_PROGRAM = Program(PROGRAM, "GlusterFS Handshake", {1: VERSION_2, 2: VERSION_2})
