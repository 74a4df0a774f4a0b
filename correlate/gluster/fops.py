"""The GlusterFS file-operation program (1298437): versions 330 (glusterfs3-xdr.x, `gfs3_*`)
and 400 (glusterfs4-xdr.x, `gfx_*`).

Procedure numbers are enum gf_fop_procnum (rpc/rpc-lib/src/protocol-common.h); they match the
actor tables of the Gluster 10 brick (index 55, GFS3_OP_PUT, has no server actor). Each
procedure declares its request and reply layouts as data; a procedure without a reply layout
still has op_ret/op_errno read, since every fop reply starts with them.
"""
from __future__ import annotations

from ..xdr import Unpacker
from . import dicts
from .layout import (GF_PROTO_FLOCK, GF_PROTO_LEASE, GF_STATFS, Layout, gfid, i32, i64,
                     iatt, iattx, name, opaque_size, status, stbuf_for_setattr, string, struct,
                     u32, u64, valid)
from .programs_base import Procedure, Program

PROGRAM = 1298437

PROCEDURE_NAMES = [
    "NULL", "STAT", "READLINK", "MKNOD", "MKDIR", "UNLINK", "RMDIR", "SYMLINK", "RENAME", "LINK",
    "TRUNCATE", "OPEN", "READ", "WRITE", "STATFS", "FLUSH", "FSYNC", "SETXATTR", "GETXATTR",
    "REMOVEXATTR", "OPENDIR", "FSYNCDIR", "ACCESS", "CREATE", "FTRUNCATE", "FSTAT", "LK",
    "LOOKUP", "READDIR", "INODELK", "FINODELK", "ENTRYLK", "FENTRYLK", "XATTROP", "FXATTROP",
    "FGETXATTR", "FSETXATTR", "RCHECKSUM", "SETATTR", "FSETATTR", "READDIRP", "RELEASE",
    "RELEASEDIR", "FREMOVEXATTR", "FALLOCATE", "DISCARD", "ZEROFILL", "IPC", "SEEK", "COMPOUND",
    "LEASE", "GETACTIVELK", "SETACTIVELK", "ICREATE", "NAMELINK", "PUT", "COPY_FILE_RANGE",
]

MAX_DIR_NAMES = 32        # directory entry names kept in a READDIR(P) result


def _dir_listing(entry: Layout):
    """READDIR/READDIRP reply lists: the number of entries and the first names."""
    entry_reader = struct(entry)       # made at import, so layout_readers.py holds it
    def read(u: Unpacker) -> dict:
        entries = u.linked_list(entry_reader, "dirlist", max_count=1 << 20)
        return {"entries": len(entries), "names": [e["name"] for e in entries[:MAX_DIR_NAMES]]}
    return read


def _lock_list(flock_layout: Layout):
    flock_reader = struct(flock_layout)
    def read(u: Unpacker) -> int:
        return len(u.linked_list(flock_reader, "locklist"))
    return read


# -- version 330: glusterfs3-xdr.x ---------------------------------------------------------
X3 = ("xdata", dicts.dict3)
FLOCK = ("flock", struct(GF_PROTO_FLOCK))
LEASE = ("lease", struct(GF_PROTO_LEASE))
G, PG, FD = ("gfid", gfid), ("pargfid", gfid), ("fd", i64)
RET = [("op_ret", i32), ("op_errno", i32)]

V3_COMMON_RSP = RET + [X3]


def V3_2IATT(first: str, second: str) -> Layout:
    """The many v3 replies made of two gf_iatt (pre/post stat or parent) and xdata."""
    return RET + [(first, iatt), (second, iatt), X3]


V3_ENTRY_RSP = RET + [("stat", iatt), ("preparent", iatt), ("postparent", iatt), X3]
V3_LOCKLIST = [FLOCK, ("client_uid", string), ("lk_flags", u32)]

V3: dict[str, tuple[Layout | None, Layout | None]] = {
    "NULL": ([], []),
    "STAT": ([G, X3], RET + [("stat", iatt), X3]),
    "READLINK": ([G, ("size", u32), X3], RET + [("buf", iatt), ("path", string), X3]),
    "MKNOD": ([PG, ("dev", u64), ("mode", u32), ("umask", u32), ("bname", name), X3], V3_ENTRY_RSP),
    "MKDIR": ([PG, ("mode", u32), ("umask", u32), ("bname", name), X3], V3_ENTRY_RSP),
    "UNLINK": ([PG, ("bname", name), ("xflags", u32), X3], V3_2IATT("preparent", "postparent")),
    "RMDIR": ([PG, ("xflags", i32), ("bname", name), X3], V3_2IATT("preparent", "postparent")),
    "SYMLINK": ([PG, ("bname", name), ("umask", u32), ("linkname", string), X3], V3_ENTRY_RSP),
    "RENAME": ([("oldgfid", gfid), ("newgfid", gfid), ("oldbname", name), ("newbname", name), X3],
               RET + [("stat", iatt), ("preoldparent", iatt), ("postoldparent", iatt),
                      ("prenewparent", iatt), ("postnewparent", iatt), X3]),
    "LINK": ([("oldgfid", gfid), ("newgfid", gfid), ("newbname", name), X3], V3_ENTRY_RSP),
    "TRUNCATE": ([G, ("offset", u64), X3], V3_2IATT("prestat", "poststat")),
    "OPEN": ([G, ("flags", u32), X3], RET + [FD, X3]),
    "READ": ([G, FD, ("offset", u64), ("size", u32), ("flag", u32), X3],
             RET + [("stat", iatt), ("size", u32), X3]),
    "WRITE": ([G, FD, ("offset", u64), ("size", u32), ("flag", u32), X3],
              V3_2IATT("prestat", "poststat")),
    "STATFS": ([G, X3], RET + [("statfs", struct(GF_STATFS)), X3]),
    "FLUSH": ([G, FD, X3], V3_COMMON_RSP),
    "FSYNC": ([G, FD, ("data", u32), X3], V3_2IATT("prestat", "poststat")),
    "SETXATTR": ([G, ("flags", u32), ("dict", dicts.dict3), X3], V3_COMMON_RSP),
    "GETXATTR": ([G, ("namelen", u32), ("name", name), X3], RET + [("dict", dicts.dict3), X3]),
    "REMOVEXATTR": ([G, ("name", name), X3], V3_COMMON_RSP),
    "OPENDIR": ([G, X3], RET + [FD, X3]),
    "FSYNCDIR": ([G, FD, ("data", i32), X3], V3_COMMON_RSP),
    "ACCESS": ([G, ("mask", u32), X3], V3_COMMON_RSP),
    "CREATE": ([PG, ("flags", u32), ("mode", u32), ("umask", u32), ("bname", name), X3],
               RET + [("stat", iatt), ("fd", u64), ("preparent", iatt), ("postparent", iatt), X3]),
    "FTRUNCATE": ([G, FD, ("offset", u64), X3], V3_2IATT("prestat", "poststat")),
    "FSTAT": ([G, FD, X3], RET + [("stat", iatt), X3]),
    "LK": ([G, FD, ("cmd", u32), ("type", u32), FLOCK, X3], RET + [FLOCK, X3]),
    "LOOKUP": ([G, PG, ("flags", u32), ("bname", name), X3],
               RET + [("stat", iatt), ("postparent", iatt), X3]),
    "READDIR": ([G, FD, ("offset", u64), ("size", u32), X3],
                RET + [("reply", _dir_listing([("d_ino", u64), ("d_off", u64), ("d_len", u32),
                                               ("d_type", u32), ("name", name)])), X3]),
    "INODELK": ([G, ("cmd", u32), ("type", u32), FLOCK, ("volume", string), X3], V3_COMMON_RSP),
    "FINODELK": ([G, FD, ("cmd", u32), ("type", u32), FLOCK, ("volume", string), X3], V3_COMMON_RSP),
    "ENTRYLK": ([G, ("cmd", u32), ("type", u32), ("namelen", u64), ("name", name),
                 ("volume", string), X3], V3_COMMON_RSP),
    "FENTRYLK": ([G, FD, ("cmd", u32), ("type", u32), ("namelen", u64), ("name", name),
                  ("volume", string), X3], V3_COMMON_RSP),
    "XATTROP": ([G, ("flags", u32), ("dict", dicts.dict3), X3], RET + [("dict", dicts.dict3), X3]),
    "FXATTROP": ([G, FD, ("flags", u32), ("dict", dicts.dict3), X3], RET + [("dict", dicts.dict3), X3]),
    "FGETXATTR": ([G, FD, ("namelen", u32), ("name", name), X3], RET + [("dict", dicts.dict3), X3]),
    "FSETXATTR": ([G, FD, ("flags", u32), ("dict", dicts.dict3), X3], V3_COMMON_RSP),
    "RCHECKSUM": ([FD, ("offset", u64), ("len", u32), X3],
                  RET + [("weak_checksum", u32), ("strong_checksum", opaque_size), X3]),
    "SETATTR": ([G, ("*stbuf", stbuf_for_setattr(iatt)), ("*valid", valid), X3],
                V3_2IATT("statpre", "statpost")),
    "FSETATTR": ([FD, ("*stbuf", stbuf_for_setattr(iatt)), ("*valid", valid), X3],
                 V3_2IATT("statpre", "statpost")),
    "READDIRP": ([G, FD, ("offset", u64), ("size", u32), ("dict", dicts.dict3)],
                 RET + [("reply", _dir_listing([("d_ino", u64), ("d_off", u64), ("d_len", u32),
                                                ("d_type", u32), ("name", name), ("_stat", iatt),
                                                ("_dict", opaque_size)])), X3]),
    "RELEASE": ([G, FD, X3], V3_COMMON_RSP),
    "RELEASEDIR": ([G, FD, X3], V3_COMMON_RSP),
    "FREMOVEXATTR": ([G, FD, ("name", name), X3], V3_COMMON_RSP),
    "FALLOCATE": ([G, FD, ("flags", u32), ("offset", u64), ("size", u64), X3],
                  V3_2IATT("statpre", "statpost")),
    "DISCARD": ([G, FD, ("offset", u64), ("size", u64), X3], V3_2IATT("statpre", "statpost")),
    "ZEROFILL": ([G, FD, ("offset", u64), ("size", u64), X3], V3_2IATT("statpre", "statpost")),
    "IPC": ([("op", i32), X3], V3_COMMON_RSP),
    "SEEK": ([G, FD, ("offset", u64), ("what", i32), X3], RET + [("offset", u64), X3]),
    "LEASE": ([G, LEASE, X3], RET + [LEASE, X3]),
    "GETACTIVELK": ([G, X3], RET + [("reply", _lock_list(V3_LOCKLIST)), X3]),
    "SETACTIVELK": ([G, ("request", _lock_list(V3_LOCKLIST)), X3], V3_COMMON_RSP),
}

# -- version 400: glusterfs4-xdr.x ---------------------------------------------------------
X4 = ("xdata", dicts.dict4)
COMMON = RET + [X4]
IATT_RSP = RET + [X4, ("stat", iattx)]
TWO_IATT = RET + [X4, ("prestat", iattx), ("poststat", iattx)]
THREE_IATT = RET + [X4, ("stat", iattx), ("preparent", iattx), ("postparent", iattx)]
DICT_RSP = RET + [X4, ("dict", dicts.dict4), ("prestat", iattx), ("poststat", iattx)]
OPEN_RSP = RET + [X4, FD]
DIRENT = [("d_ino", u64), ("d_off", u64), ("d_len", u32), ("d_type", u32), ("name", name)]
V4_LOCKLIST = [FLOCK, ("client_uid", string), ("lk_flags", u32)]

V4: dict[str, tuple[Layout | None, Layout | None]] = {
    "NULL": ([], []),
    "STAT": ([G, X4], IATT_RSP),
    "READLINK": ([G, ("size", u32), X4], RET + [X4, ("buf", iattx), ("path", string)]),
    "MKNOD": ([PG, ("dev", u64), ("mode", u32), ("umask", u32), ("bname", name), X4], THREE_IATT),
    "MKDIR": ([PG, ("mode", u32), ("umask", u32), ("bname", name), X4], THREE_IATT),
    "UNLINK": ([PG, ("bname", name), ("xflags", u32), X4], TWO_IATT),
    "RMDIR": ([PG, ("xflags", i32), ("bname", name), X4], TWO_IATT),
    "SYMLINK": ([PG, ("bname", name), ("umask", u32), ("linkname", string), X4], THREE_IATT),
    "RENAME": ([("oldgfid", gfid), ("newgfid", gfid), ("oldbname", name), ("newbname", name), X4],
               RET + [X4, ("stat", iattx), ("preoldparent", iattx), ("postoldparent", iattx),
                      ("prenewparent", iattx), ("postnewparent", iattx)]),
    "LINK": ([("oldgfid", gfid), ("newgfid", gfid), ("newbname", name), X4], THREE_IATT),
    "TRUNCATE": ([G, ("offset", u64), X4], TWO_IATT),
    "OPEN": ([G, ("flags", u32), X4], OPEN_RSP),
    "READ": ([G, FD, ("offset", u64), ("size", u32), ("flag", u32), X4],
             RET + [("stat", iattx), ("size", u32), X4]),
    "WRITE": ([G, FD, ("offset", u64), ("size", u32), ("flag", u32), X4], TWO_IATT),
    "STATFS": ([G, X4], RET + [X4, ("statfs", struct(GF_STATFS))]),
    "FLUSH": ([G, FD, X4], COMMON),
    "FSYNC": ([G, FD, ("data", u32), X4], TWO_IATT),
    "SETXATTR": ([G, ("flags", u32), ("dict", dicts.dict4), X4], COMMON),
    "GETXATTR": ([G, ("namelen", u32), ("name", name), X4], DICT_RSP),
    "REMOVEXATTR": ([G, ("name", name), X4], COMMON),
    "OPENDIR": ([G, X4], OPEN_RSP),
    "FSYNCDIR": ([G, FD, ("data", i32), X4], COMMON),
    "ACCESS": ([G, ("mask", u32), X4], COMMON),
    "CREATE": ([PG, ("flags", u32), ("mode", u32), ("umask", u32), ("bname", name), X4],
               RET + [X4, ("stat", iattx), ("fd", u64), ("preparent", iattx), ("postparent", iattx)]),
    "FTRUNCATE": ([G, FD, ("offset", u64), X4], TWO_IATT),
    "FSTAT": ([G, FD, X4], IATT_RSP),
    "LK": ([G, FD, ("cmd", u32), ("type", u32), FLOCK, X4], RET + [X4, FLOCK]),
    "LOOKUP": ([G, PG, ("flags", u32), ("bname", name), X4], TWO_IATT),
    "READDIR": ([G, FD, ("offset", u64), ("size", u32), X4],
                RET + [X4, ("reply", _dir_listing(DIRENT))]),
    "INODELK": ([G, ("cmd", u32), ("type", u32), FLOCK, ("volume", string), X4], COMMON),
    "FINODELK": ([G, FD, ("cmd", u32), ("type", u32), FLOCK, ("volume", string), X4], COMMON),
    "ENTRYLK": ([G, ("cmd", u32), ("type", u32), ("namelen", u64), ("name", name),
                 ("volume", string), X4], COMMON),
    "FENTRYLK": ([G, FD, ("cmd", u32), ("type", u32), ("namelen", u64), ("name", name),
                  ("volume", string), X4], COMMON),
    "XATTROP": ([G, ("flags", u32), ("dict", dicts.dict4), X4], DICT_RSP),
    "FXATTROP": ([G, FD, ("flags", u32), ("dict", dicts.dict4), X4], DICT_RSP),
    "FGETXATTR": ([G, FD, ("namelen", u32), ("name", name), X4], DICT_RSP),
    "FSETXATTR": ([G, FD, ("flags", u32), ("dict", dicts.dict4), X4], COMMON),
    "RCHECKSUM": ([G, FD, ("offset", u64), ("len", u32), ("flags", u32), X4],
                  RET + [X4, ("flags", u32), ("weak_checksum", u32), ("strong_checksum", opaque_size)]),
    "SETATTR": ([G, ("*stbuf", stbuf_for_setattr(iattx)), ("*valid", valid), X4], TWO_IATT),
    "FSETATTR": ([G, FD, ("*stbuf", stbuf_for_setattr(iattx)), ("*valid", valid), X4], TWO_IATT),
    "READDIRP": ([G, FD, ("offset", u64), ("size", u32), X4],
                 RET + [X4, ("reply", _dir_listing(DIRENT + [("_stat", iattx), ("_dict", dicts.dict4)]))]),
    "RELEASE": ([G, FD, X4], COMMON),
    "RELEASEDIR": ([G, FD, X4], COMMON),
    "FREMOVEXATTR": ([G, FD, ("name", name), X4], COMMON),
    "FALLOCATE": ([G, FD, ("flags", u32), ("offset", u64), ("size", u64), X4], TWO_IATT),
    "DISCARD": ([G, FD, ("offset", u64), ("size", u64), X4], TWO_IATT),
    "ZEROFILL": ([G, FD, ("offset", u64), ("size", u64), X4], TWO_IATT),
    "IPC": ([("op", i32), X4], COMMON),
    "SEEK": ([G, FD, ("offset", u64), ("what", i32), X4], RET + [X4, ("offset", u64)]),
    "LEASE": ([G, LEASE, X4], RET + [X4, LEASE]),
    "GETACTIVELK": ([G, X4], RET + [X4, ("reply", _lock_list(V4_LOCKLIST))]),
    "SETACTIVELK": ([G, ("request", _lock_list(V4_LOCKLIST)), X4], COMMON),
    "ICREATE": ([G, ("mode", u32), X4], IATT_RSP),
    "NAMELINK": ([PG, ("bname", name), X4], TWO_IATT),
    "PUT": ([PG, ("bname", name), ("mode", u32), ("umask", u32), ("flag", u32), ("offset", u64),
             ("size", u32), ("xattr", dicts.dict4), X4], THREE_IATT),
    "COPY_FILE_RANGE": ([("gfid1", gfid), ("gfid2", gfid), ("fd_in", i64), ("fd_out", i64),
                         ("off_in", u64), ("off_out", u64), ("size", u32), ("flag", u32), X4],
                        THREE_IATT),
}


def _reader(lay: Layout | None):
    return None if lay is None else struct(lay)


def _table(layouts: dict[str, tuple[Layout | None, Layout | None]]) -> dict[int, Procedure]:
    table = {}
    for num, pname in enumerate(PROCEDURE_NAMES):
        req, rsp = layouts.get(pname, (None, RET))
        table[num] = Procedure(pname, _reader(req), _reader(rsp), status(rsp))
    return table


FOP_PROGRAM = Program(PROGRAM, "GlusterFS", {330: _table(V3), 400: _table(V4)})
