"""Gluster dictionaries on the wire (xdata, SETVOLUME options and replies).

Two encodings exist:
- v3 (glusterfs3-xdr.x `opaque dict<>`): the bytes of dict_serialize() (libglusterfs dict.c):
  a 32-bit big-endian pair count, then per pair a 32-bit key length, a 32-bit value length,
  the key and its NUL, and the value bytes. No XDR padding inside.
- v4 (glusterfs4-xdr.x `gfx_dict`): xdr_size, count, then an XDR array of (key, gfx_value),
  where gfx_value is a union switched on gf_dict_data_type_t (glusterfs-fops.h).

Values become str when they are printable text, otherwise hex; both are capped.
"""
from __future__ import annotations

import struct

from ..errors import DecodeError
from ..xdr import Unpacker, safe_text
from . import layout

MAX_PAIRS = 1024
MAX_SHOWN_TEXT = 512      # characters of a text value kept in an event
MAX_SHOWN_BINARY = 64     # bytes of a binary value kept (as hex)

# gf_dict_data_type_t
GF_DATA_TYPE_STR_OLD, GF_DATA_TYPE_INT, GF_DATA_TYPE_UINT, GF_DATA_TYPE_DOUBLE = 1, 2, 3, 4
GF_DATA_TYPE_STR, GF_DATA_TYPE_PTR, GF_DATA_TYPE_GFUUID, GF_DATA_TYPE_IATT = 5, 6, 7, 8
GF_DATA_TYPE_MDATA = 9


def render(raw: bytes) -> str:
    """Printable text as str (one trailing NUL dropped), anything else as hex; both capped."""
    text = raw[:-1] if raw.endswith(b"\0") else raw
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        s = None
    if s is not None and (s.isprintable() or all(c.isprintable() or c in "\t\n" for c in s)):
        if len(s) > MAX_SHOWN_TEXT:
            return s[:MAX_SHOWN_TEXT] + f"...({len(raw)} bytes)"
        return s
    if len(raw) > MAX_SHOWN_BINARY:
        return "0x" + raw[:MAX_SHOWN_BINARY].hex() + f"...({len(raw)} bytes)"
    return "0x" + raw.hex()


def _key(raw: bytes) -> str:
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return safe_text(raw.decode("utf-8", "backslashreplace")[:layout.MAX_NAME])


_known_keys: dict[bytes, str] = {}     # the same few keys come in every message


def _cached_key(raw: bytes) -> str:
    key = _known_keys.get(raw)
    if key is None:
        if len(_known_keys) >= 1024:    # bounded, whatever the capture holds
            _known_keys.clear()
        key = _known_keys[raw] = _key(raw)
    return key


def parse_serialized(buf: bytes, base: int = 0) -> dict:
    """A dict_serialize() buffer (the content of a v3 `opaque dict<>`)."""
    if not buf:
        return {}
    if len(buf) < 4:
        raise DecodeError(f"dict: {len(buf)} bytes is too short for a count at offset {base}")
    count = struct.unpack_from(">i", buf, 0)[0]
    pos = 4
    if count < 0 or count > MAX_PAIRS or count * 9 > len(buf) - pos:
        raise DecodeError(f"dict: implausible pair count {count} for {len(buf)} bytes at offset {base}")
    out: dict[str, str] = {}
    for i in range(count):
        if len(buf) - pos < 8:
            raise DecodeError(f"dict: pair {i} header truncated at offset {base + pos}")
        keylen, vallen = struct.unpack_from(">II", buf, pos)
        pos += 8
        if keylen + 1 + vallen > len(buf) - pos:
            raise DecodeError(f"dict: pair {i} wants {keylen}+1+{vallen} bytes, "
                              f"{len(buf) - pos} left at offset {base + pos}")
        key = _key(buf[pos:pos + keylen])
        pos += keylen + 1
        out[key] = render(buf[pos:pos + vallen])
        pos += vallen
    if pos != len(buf):
        # dict_serialize() fills its buffer exactly: slack means this is not such a buffer
        raise DecodeError(f"dict: {len(buf) - pos} bytes after the last pair at offset {base + pos}")
    return out


def dict3(u: Unpacker) -> dict:
    """v3: `opaque dict<>` holding a serialized dict."""
    start = u.base + u.pos + 4
    return parse_serialized(u.opaque("dict"), start)


def _gfx_value(u: Unpacker):
    start = u.pos
    kind = u.int32("gfx_value type")
    if kind == GF_DATA_TYPE_INT:
        return u.int64("value_int")
    if kind == GF_DATA_TYPE_UINT:
        return u.uint64("value_uint")
    if kind == GF_DATA_TYPE_DOUBLE:
        return u.double("value_dbl")
    if kind in (GF_DATA_TYPE_STR, GF_DATA_TYPE_PTR, GF_DATA_TYPE_STR_OLD):
        return render(u.opaque("dict value"))
    if kind == GF_DATA_TYPE_GFUUID:
        return layout.uuid_text(u.fopaque(16, "uuid"))
    if kind == GF_DATA_TYPE_IATT:
        return layout.iattx(u)
    if kind == GF_DATA_TYPE_MDATA:
        return layout.decode(u, layout.GFX_MDATA_IATT)
    raise DecodeError(f"gfx_value: unknown data type {kind} at offset {u.base + start}")


def _gfx_pair(u: Unpacker) -> tuple[str, object]:
    key = _key(u.opaque("dict key", layout.MAX_NAME))
    return key, _gfx_value(u)


_GFX_HEAD = struct.Struct(">IiI")       # xdr_size, count, pairs<> length
_WORD = struct.Struct(">I")
_INT64 = struct.Struct(">q")
_UINT64 = struct.Struct(">Q")
_TEXT_TYPES = (GF_DATA_TYPE_STR, GF_DATA_TYPE_PTR, GF_DATA_TYPE_STR_OLD)


def _gfx_pairs(buf, pos: int) -> tuple[dict, int] | None:
    """The pairs of a gfx_dict whose values are integers, text or uuids, read straight from
    the buffer: (pairs, end). None for anything else (other value types, bad lengths), which
    the field-by-field reader then handles and reports."""
    try:
        _, _, n = _GFX_HEAD.unpack_from(buf, pos)
        pos += 12
        if not n:
            return {}, pos
        if n > MAX_PAIRS or n * 8 > len(buf) - pos:
            return None
        out = {}
        for _ in range(n):
            klen = _WORD.unpack_from(buf, pos)[0]
            kend = pos + 4 + klen
            if klen > layout.MAX_NAME or kend + (-klen & 3) + 4 > len(buf):
                return None
            key = _cached_key(bytes(buf[pos + 4:kend]))
            pos = kend + (-klen & 3)
            kind = _WORD.unpack_from(buf, pos)[0]
            pos += 4
            if kind == GF_DATA_TYPE_INT:
                value = _INT64.unpack_from(buf, pos)[0]
                pos += 8
            elif kind == GF_DATA_TYPE_UINT:
                value = _UINT64.unpack_from(buf, pos)[0]
                pos += 8
            elif kind in _TEXT_TYPES:
                vlen = _WORD.unpack_from(buf, pos)[0]
                vend = pos + 4 + vlen
                if vend + (-vlen & 3) > len(buf):
                    return None
                value = render(bytes(buf[pos + 4:vend]))
                pos = vend + (-vlen & 3)
            elif kind == GF_DATA_TYPE_GFUUID:
                if pos + 16 > len(buf):
                    return None
                value = layout.uuid_text(bytes(buf[pos:pos + 16]))
                pos += 16
            else:
                return None
            out[key] = value
        return out, pos
    except struct.error:            # a short buffer
        return None


def dict4(u: Unpacker) -> dict:
    """v4: gfx_dict {xdr_size, count, pairs<>}."""
    fast = _gfx_pairs(u.buffer, u.pos)
    if fast is not None:
        u.pos = fast[1]
        return fast[0]
    return _dict4_slowly(u)


def _dict4_slowly(u: Unpacker) -> dict:
    u.uint32("gfx_dict xdr_size")
    u.int32("gfx_dict count")
    pairs = u.array(_gfx_pair, "gfx_dict pairs", MAX_PAIRS, min_item_size=8)
    return dict(pairs)


def dict_any(u: Unpacker) -> dict:
    """Either encoding: v3 first (what the handshake program sends), else v4."""
    start = u.pos
    try:
        return dict3(u)
    except DecodeError:
        u.pos = start
        return dict4(u)
