"""The GlusterFS Handshake program (14398633, version 2): SETVOLUME, GETSPEC, ...

Procedures: enum gf_handshake_procnum (protocol-common.h). Layouts: gf_setvolume_req/rsp,
gf_getspec_req/rsp and friends in glusterfs3-xdr.x; this program still carries v3 dicts
(dict_serialize() inside `opaque dict<>`), the reader falls back to gfx_dict if that fails.
"""
from __future__ import annotations

from ..xdr import Unpacker
from . import dicts, volfile
from .layout import decode, i32, string, u32
from .programs_base import Procedure, Program

PROGRAM = 14398633
SPEC_PREFIX = 120          # characters of a volfile kept in the GETSPEC result
MAX_SPEC = 64 << 20        # a volfile larger than this is not plausible

RET = [("op_ret", i32), ("op_errno", i32)]


def spec(u: Unpacker) -> dict:
    """A volfile: its size, a short prefix, and its replica/disperse sets (which bricks are
    peers), not the whole text."""
    raw = u.opaque("spec", MAX_SPEC)
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    out = {"spec_size": len(raw), "spec_prefix": dicts.render(raw[:SPEC_PREFIX])}
    sets = volfile.brick_sets(raw.decode("utf-8", "replace"))
    if sets:
        out["brick_sets"] = [{"name": s.name, "type": s.kind,
                              "bricks": [[host, path] for host, path in s.bricks]}
                             for s in sets]
    return out


def _layout(lay):
    return lambda u: decode(u, lay)


SETVOLUME = Procedure("SETVOLUME", _layout([("dict", dicts.dict_any)]),
                      _layout(RET + [("dict", dicts.dict_any)]))
GETSPEC = Procedure("GETSPEC", _layout([("flags", u32), ("key", string), ("xdata", dicts.dict_any)]),
                    _layout(RET + [("*spec", spec), ("xdata", dicts.dict_any)]))

VERSION_2 = {
    0: Procedure("NULL", _layout([]), _layout([])),
    1: SETVOLUME,
    2: GETSPEC,
    3: Procedure("PING"),
    4: Procedure("SET_LK_VER", _layout([("uid", string), ("lk_ver", i32)]),
                 _layout(RET + [("lk_ver", i32)])),
    5: Procedure("EVENT_NOTIFY", _layout([("op", i32), ("dict", dicts.dict_any)]),
                 _layout(RET + [("dict", dicts.dict_any)])),
    6: Procedure("GET_VOLUME_INFO", _layout([("dict", dicts.dict_any)]),
                 _layout(RET + [("op_errstr", string), ("dict", dicts.dict_any)])),
    7: Procedure("GET_SNAPSHOT_INFO", _layout([("dict", dicts.dict_any)]),
                 _layout(RET + [("op_errstr", string), ("dict", dicts.dict_any)])),
}

HANDSHAKE_PROGRAM = Program(PROGRAM, "GlusterFS Handshake", {1: VERSION_2, 2: VERSION_2})
