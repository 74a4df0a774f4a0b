"""The GF-DUMP program (123451501, version 1): DUMP lists the programs a server offers, PING
is the keep-alive every Gluster RPC client sends.

Layouts: gf_dump_req / gf_dump_rsp / gf_prog_detail (rpc-common-xdr.x); PING replies carry a
gf_common_rsp (op_ret, op_errno, xdata).
"""
from __future__ import annotations

from ..xdr import Unpacker
from . import dicts
from .layout import decode, i32, status, string, u64
from .programs_base import Procedure, Program

PROGRAM = 123451501

PROG_DETAIL = [("progname", string), ("prognum", u64), ("progver", u64)]


def programs(u: Unpacker) -> list[dict]:
    return u.linked_list(lambda uu: decode(uu, PROG_DETAIL), "gf_prog_detail", max_count=1024)


def _layout(lay):
    return lambda u: decode(u, lay)


def _procedure(name: str, args, result) -> Procedure:
    return Procedure(name, _layout(args), _layout(result), status(result))


VERSION_1 = {
    0: _procedure("NULL", [], []),
    1: _procedure("DUMP", [("gfs_id", u64)],
                  [("gfs_id", u64), ("op_ret", i32), ("op_errno", i32), ("prog", programs)]),
    2: _procedure("PING", [],
                  [("op_ret", i32), ("op_errno", i32), ("xdata", dicts.dict_any)]),
}

DUMP_PROGRAM = Program(PROGRAM, "GF-DUMP", {1: VERSION_1})
