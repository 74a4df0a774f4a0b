"""The Gluster Portmap program (34123456, version 1), served by glusterd on port 24007.

A client asks PORTBYBRICK for the TCP port of a brick before it connects to it.
Procedures: enum gf_pmap_procnum (protocol-common.h); layouts: portmap-xdr.x.
"""
from __future__ import annotations

from .layout import decode, i32, string
from .programs_base import Procedure, Program

PROGRAM = 34123456
RET = [("op_ret", i32), ("op_errno", i32)]


def _layout(lay):
    return lambda u: decode(u, lay)


VERSION_1 = {
    0: Procedure("NULL", _layout([]), _layout([])),
    1: Procedure("PORTBYBRICK", _layout([("brick", string)]),
                 _layout(RET + [("status", i32), ("port", i32)])),
    2: Procedure("BRICKBYPORT", _layout([("port", i32)]),
                 _layout(RET + [("status", i32), ("brick", string)])),
    3: Procedure("SIGNUP"),
    4: Procedure("SIGNIN", _layout([("brick", string), ("port", i32), ("pid", i32)]), _layout(RET)),
    5: Procedure("SIGNOUT", _layout([("brick", string), ("port", i32), ("rdma_port", i32)]),
                 _layout(RET)),
}

PORTMAP_PROGRAM = Program(PROGRAM, "Gluster Portmap", {1: VERSION_1})
