"""The GlusterFS Callback program (52743234, version 1): calls a server sends to its clients
(volfile changed, upcalls, lease recall, lock contention). Callbacks get no reply.

Procedures: enum gf_cbk_procnum (protocol-common.h, as in the Gluster 10 client's actor table);
layouts: gfs3_cbk_cache_invalidation_req, gfs3_recall_lease_req (glusterfs3-xdr.x) and
gfs4_inodelk_contention_req / gfs4_entrylk_contention_req (glusterfs4-xdr.x).
"""
from __future__ import annotations

from . import dicts
from .layout import GF_PROTO_FLOCK, decode, gfid, iatt, name, string, struct, u32
from .programs_base import Procedure, Program

PROGRAM = 52743234


def _layout(lay):
    return lambda u: decode(u, lay)


NAMES = ["NULL", "FETCHSPEC", "INO_FLUSH", "EVENT_NOTIFY", "GET_SNAPS", "CACHE_INVALIDATION",
         "CHILD_UP", "CHILD_DOWN", "RECALL_LEASE", "STATEDUMP", "INODELK_CONTENTION",
         "ENTRYLK_CONTENTION"]

ARGS = {
    "CACHE_INVALIDATION": [("gfid", string), ("event_type", u32), ("flags", u32),
                           ("expire_time_attr", u32), ("stat", iatt), ("parent_stat", iatt),
                           ("oldparent_stat", iatt), ("xdata", dicts.dict3)],
    "RECALL_LEASE": [("gfid", gfid), ("lease_type", u32),
                     ("tid", lambda u: u.fopaque(16, "tid").hex()), ("xdata", dicts.dict3)],
    "INODELK_CONTENTION": [("gfid", gfid), ("flock", struct(GF_PROTO_FLOCK)), ("pid", u32),
                           ("domain", string), ("xdata", dicts.dict3)],
    "ENTRYLK_CONTENTION": [("gfid", gfid), ("type", u32), ("pid", u32), ("name", name),
                           ("domain", string), ("xdata", dicts.dict3)],
}

VERSION_1 = {num: Procedure(n, _layout(ARGS[n]) if n in ARGS else None)
             for num, n in enumerate(NAMES)}

CBK_PROGRAM = Program(PROGRAM, "GlusterFS Callback", {1: VERSION_1}, expects_reply=False)
