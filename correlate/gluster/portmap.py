"""The Gluster Portmap program (34123456, version 1), served by glusterd on port 24007.

A client asks PORTBYBRICK for the TCP port of a brick before it connects to it.
Procedures: enum gf_pmap_procnum (protocol-common.h); layouts: portmap-xdr.x.
"""
from __future__ import annotations

from .layout import decode, i32, status, string
from .programs_base import Procedure, Program

PROGRAM = 34123456
RET = [("op_ret", i32), ("op_errno", i32)]


def _layout(lay):
    return lambda u: decode(u, lay)


def _procedure(name: str, args, result) -> Procedure:
    return Procedure(name, _layout(args), _layout(result), status(result))


VERSION_1 = {
    0: _procedure("NULL", [], []),
    1: _procedure("PORTBYBRICK", [("brick", string)],
                  RET + [("status", i32), ("port", i32)]),
    2: _procedure("BRICKBYPORT", [("port", i32)],
                  RET + [("status", i32), ("brick", string)]),
    3: Procedure("SIGNUP"),
    4: _procedure("SIGNIN", [("brick", string), ("port", i32), ("pid", i32)], RET),
    5: _procedure("SIGNOUT", [("brick", string), ("port", i32), ("rdma_port", i32)],
                  RET),
}

PORTMAP_PROGRAM = Program(PROGRAM, "Gluster Portmap", {1: VERSION_1})
