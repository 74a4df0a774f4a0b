"""Argument and result layouts declared as data, and the small decoder that reads them.

A layout is a list of (name, reader) pairs, in wire order, as in the Gluster .x files. A
reader takes an Unpacker and returns a value; a reader that returns a dict whose name starts
with "*" is merged into the parent (used to flatten e.g. the SETATTR stbuf). Names starting
with "_" are read but left out of the result.

`decode` interprets a layout field by field; `struct` turns it once into a plan that
unpacks each run of fixed-size fields with one precompiled Struct, read by one loop
(layout_read.py, compiled with the per-packet core: no code is generated per layout). Both give the same dict;
when the compiled reader meets anything wrong it re-reads with `decode`, so errors (and their
messages) are exactly those of the field-by-field reading.
"""
from __future__ import annotations

from struct import Struct
from typing import Any, Callable

from ..errors import DecodeError
from ..xdr import Unpacker
from .layout_read import FIELD, MERGE, RUN, StructReader

Reader = Callable[[Unpacker], Any]
Layout = list[tuple[str, Reader]]

MAX_NAME = 4096           # longest path component / key we accept
MAX_STRING = 1 << 20      # generic strings (a volfile is a string too: see handshake)


def decode(u: Unpacker, layout: Layout) -> dict:
    out: dict[str, Any] = {}
    for name, reader in layout:
        try:
            value = reader(u)
        except DecodeError as exc:       # say which field: "poststat: ia_size: needs 8 bytes ..."
            raise DecodeError(f"{name.lstrip('*_')}: {exc}") from None
        if name.startswith("_"):
            continue
        if name.startswith("*"):
            out.update(value)
        else:
            out[name] = value
    return out


# -- primitive readers ------------------------------------------------------------------
def u32(u: Unpacker) -> int:
    return u.uint32()


def i32(u: Unpacker) -> int:
    return u.int32()


def u64(u: Unpacker) -> int:
    return u.uint64()


def i64(u: Unpacker) -> int:
    return u.int64()


def uuid_text(raw: bytes) -> str:
    """16 bytes as the UUID text Gluster prints (what str(uuid.UUID(bytes=raw)) gives)."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def gfid(u: Unpacker) -> str:
    """opaque gfid[16], shown as the UUID Gluster prints."""
    return uuid_text(u.fopaque(16, "gfid"))


# Readers of fixed-size items: their struct format and the conversion of the unpacked value.
FIXED: dict[Reader, tuple[str, Callable | None]] = {
    u32: ("I", None), i32: ("i", None), u64: ("Q", None), i64: ("q", None),
    gfid: ("16s", uuid_text),
}


_compiled: dict[int, tuple[Layout, Reader]] = {}     # id -> (layout kept alive, its reader)


def struct(layout: Layout) -> Reader:
    """A reader for a struct, planned from its layout: one Struct per run of fixed-size
    fields, the other readers called in between. A layout shared by several procedures is
    planned once."""
    known = _compiled.get(id(layout))
    if known is not None and known[0] is layout:
        return known[1]
    reader = _compile(layout)
    _compiled[id(layout)] = (layout, reader)
    return reader


def status(layout: Layout | None) -> Reader | None:
    """A reader of a reply's op_ret and op_errno only: the layout up to op_errno, when only
    fixed-size fields come before it (so the rest of the reply is never touched)."""
    names = [n for n, _ in layout or ()]
    if "op_errno" not in names:
        return None
    head = layout[:names.index("op_errno") + 1]
    if not all(reader in FIXED for _, reader in head):
        return None
    return struct(head)


def _compile(layout: Layout) -> Reader:
    steps: list[tuple] = []
    run: list[tuple[str, str, Callable | None]] = []

    def flush_run() -> None:
        if run:
            steps.append((RUN, Struct(">" + "".join(fmt for _, fmt, _ in run)),
                          tuple(None if n.startswith("_") else n for n, _, _ in run),
                          tuple(conv for _, _, conv in run)))
            run.clear()

    for fname, reader in layout:
        fixed = FIXED.get(reader)
        if fixed is not None and not fname.startswith("*"):
            run.append((fname, *fixed))
            continue
        flush_run()
        if fname.startswith("*"):
            steps.append((MERGE, reader, None, None))
        else:
            steps.append((FIELD, reader, None if fname.startswith("_") else fname, None))
    flush_run()
    return StructReader(tuple(steps), lambda u: decode(u, layout))


def string(u: Unpacker) -> str:
    return u.string("string", MAX_STRING)


def name(u: Unpacker) -> str:
    return u.string("name", MAX_NAME)


def opaque_size(u: Unpacker) -> int:
    """Variable opaque we do not show (payloads, checksums): only its length."""
    return u.skip_opaque("opaque")


def opaque_hex(u: Unpacker) -> str:
    return u.opaque("opaque", 1024).hex()


def flags(table: dict[int, str]) -> Callable[[int], list[str]]:
    """Names of the bits set in a value (unknown bits as hex)."""
    def names(value: int) -> list[str]:
        out = [n for bit, n in table.items() if value & bit]
        unknown = value & ~sum(table)
        if unknown:
            out.append(hex(unknown))
        return out
    return names


# -- common Gluster structures --------------------------------------------------------
IA_TYPES = {0o140000: "IA_IFSOCK", 0o120000: "IA_IFLNK", 0o100000: "IA_IFREG",
            0o060000: "IA_IFBLK", 0o040000: "IA_IFDIR", 0o020000: "IA_IFCHR",
            0o010000: "IA_IFIFO"}


def _with_type(d: dict) -> dict:
    d["ia_type"] = IA_TYPES.get(d["mode"] & 0o170000, "IA_INVAL")
    return d


# glusterfs3-xdr.x gf_iatt: times are unsigned 32-bit seconds on this wire version.
GF_IATT: Layout = [
    ("ia_gfid", gfid), ("ia_ino", u64), ("ia_dev", u64), ("mode", u32), ("ia_nlink", u32),
    ("ia_uid", u32), ("ia_gid", u32), ("ia_rdev", u64), ("ia_size", u64),
    ("ia_blksize", u32), ("ia_blocks", u64),
    ("ia_atime", u32), ("ia_atime_nsec", u32), ("ia_mtime", u32), ("ia_mtime_nsec", u32),
    ("ia_ctime", u32), ("ia_ctime_nsec", u32),
]

# glusterfs4-xdr.x gfx_iattx: seconds are signed 64-bit (`hyper`), so -1 stays -1.
GFX_IATTX: Layout = [
    ("ia_gfid", gfid), ("ia_flags", u64), ("ia_ino", u64), ("ia_dev", u64), ("ia_rdev", u64),
    ("ia_size", u64), ("ia_blocks", u64), ("ia_attributes", u64), ("ia_attributes_mask", u64),
    ("ia_atime", i64), ("ia_mtime", i64), ("ia_ctime", i64), ("ia_btime", i64),
    ("ia_atime_nsec", u32), ("ia_mtime_nsec", u32), ("ia_ctime_nsec", u32), ("ia_btime_nsec", u32),
    ("ia_nlink", u32), ("ia_uid", u32), ("ia_gid", u32), ("ia_blksize", u32), ("mode", u32),
]

GFX_MDATA_IATT: Layout = [
    ("ia_atime", i64), ("ia_mtime", i64), ("ia_ctime", i64),
    ("ia_atime_nsec", u32), ("ia_mtime_nsec", u32), ("ia_ctime_nsec", u32),
]


_gf_iatt = struct(GF_IATT)
_gfx_iattx = struct(GFX_IATTX)


def iatt(u: Unpacker) -> dict:
    return _with_type(_gf_iatt(u))


def iattx(u: Unpacker) -> dict:
    return _with_type(_gfx_iattx(u))


GF_STATFS: Layout = [(n, u64) for n in ("bsize", "frsize", "blocks", "bfree", "bavail", "files",
                                        "ffree", "favail", "fsid", "flag", "namemax")]

GF_PROTO_FLOCK: Layout = [
    ("type", u32), ("whence", u32), ("start", u64), ("len", u64), ("pid", u32),
    ("lk_owner", opaque_hex),
]

GF_PROTO_LEASE: Layout = [
    ("cmd", u32), ("lease_type", u32), ("lease_id", lambda u: u.fopaque(16, "lease_id").hex()),
    ("lease_flags", u32),
]

# xlator.h GF_SET_ATTR_* / GF_ATTR_*_NOW: the `valid` mask of SETATTR and FSETATTR.
SETATTR_VALID = {
    0x1: "GF_SET_ATTR_MODE", 0x2: "GF_SET_ATTR_UID", 0x4: "GF_SET_ATTR_GID",
    0x8: "GF_SET_ATTR_SIZE", 0x10: "GF_SET_ATTR_ATIME", 0x20: "GF_SET_ATTR_MTIME",
    0x40: "GF_SET_ATTR_CTIME", 0x80: "GF_ATTR_ATIME_NOW", 0x100: "GF_ATTR_MTIME_NOW",
}
valid_flags = flags(SETATTR_VALID)


def stbuf_for_setattr(iatt_reader: Reader) -> Reader:
    """The stbuf of (F)SETATTR flattened to what `valid` selects from it."""
    def read(u: Unpacker) -> dict:
        st = iatt_reader(u)
        return {"mode": st["mode"], "uid": st["ia_uid"], "gid": st["ia_gid"], "size": st["ia_size"],
                "atime": st["ia_atime"], "atime_nsec": st["ia_atime_nsec"],
                "mtime": st["ia_mtime"], "mtime_nsec": st["ia_mtime_nsec"]}
    return read


def valid(u: Unpacker) -> dict:
    v = u.int32("valid")
    return {"valid": v, "valid_flags": valid_flags(v & 0xFFFFFFFF)}
