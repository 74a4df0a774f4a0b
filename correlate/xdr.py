"""XDR (RFC 4506) over untrusted bytes: a bounded Unpacker, and a Packer for building messages.

Every length read from the input is checked against the bytes that are left before anything
is sliced or allocated, every array count against a cap, and the only error raised is
DecodeError, whose message names what was being read and at which offset.
"""
from __future__ import annotations

import struct
from typing import Callable, TypeVar

from .errors import DecodeError

T = TypeVar("T")

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")

DEFAULT_MAX_COUNT = 4096        # array elements, unless the caller says otherwise
DEFAULT_MAX_LINKED = 4096       # elements of an XDR optional-data linked list


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def safe_text(s: str) -> str:
    """Wire text made safe for a terminal: control and other unprintable characters (newline
    and tab included) become backslash escapes, as `ls -b` shows odd file names."""
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in s)


class Unpacker:
    """Reads XDR items from `data` (bytes, bytearray or memoryview) starting at `offset`.

    `base` is added to offsets in error messages, so a decoder of an RPC body can report
    offsets relative to the whole record."""

    __slots__ = ("_buf", "pos", "base")

    def __init__(self, data, offset: int = 0, base: int = 0):
        self._buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self.pos = offset
        self.base = base

    # -- bookkeeping ------------------------------------------------------------------
    @property
    def buffer(self):
        """The bytes being read, for decoders that read a whole structure in one step (they
        must check every length against it themselves)."""
        return self._buf

    def remaining(self) -> int:
        return len(self._buf) - self.pos

    def at_end(self) -> bool:
        return self.pos >= len(self._buf)

    def where(self) -> str:
        return f"offset {self.base + self.pos}"

    def _need(self, n: int, what: str) -> None:
        if n < 0 or n > len(self._buf) - self.pos:
            raise DecodeError(f"{what}: needs {n} bytes, {max(0, len(self._buf) - self.pos)} left "
                              f"at {self.where()}")

    def unpack_run(self, s: struct.Struct) -> tuple:
        """A run of fixed-size items read with one precompiled Struct."""
        try:
            v = s.unpack_from(self._buf, self.pos)
        except struct.error:
            raise DecodeError(f"fixed-size fields: needs {s.size} bytes, "
                              f"{max(0, len(self._buf) - self.pos)} left at {self.where()}") from None
        self.pos += s.size
        return v

    def rest(self) -> bytes:
        """All bytes not read yet (for payloads that follow the XDR part)."""
        out = bytes(self._buf[self.pos:])
        self.pos = len(self._buf)
        return out

    # -- integers -----------------------------------------------------------------------
    # unpack_from itself finds a short buffer; _need then raises the DecodeError that says so.
    def uint32(self, what: str = "uint32") -> int:
        try:
            v = _U32.unpack_from(self._buf, self.pos)[0]
        except struct.error:
            self._need(4, what)
            raise
        self.pos += 4
        return v

    def int32(self, what: str = "int32") -> int:
        try:
            v = _I32.unpack_from(self._buf, self.pos)[0]
        except struct.error:
            self._need(4, what)
            raise
        self.pos += 4
        return v

    def uint64(self, what: str = "uint64") -> int:
        try:
            v = _U64.unpack_from(self._buf, self.pos)[0]
        except struct.error:
            self._need(8, what)
            raise
        self.pos += 8
        return v

    def int64(self, what: str = "int64") -> int:
        try:
            v = _I64.unpack_from(self._buf, self.pos)[0]
        except struct.error:
            self._need(8, what)
            raise
        self.pos += 8
        return v

    def double(self, what: str = "double") -> float:
        try:
            v = _F64.unpack_from(self._buf, self.pos)[0]
        except struct.error:
            self._need(8, what)
            raise
        self.pos += 8
        return v

    def bool(self, what: str = "bool") -> bool:
        start = self.pos
        v = self.uint32(what)
        if v > 1:
            raise DecodeError(f"{what}: boolean is {v}, not 0 or 1, at offset {self.base + start}")
        return v == 1

    def enum(self, names: dict[int, str] | None = None, what: str = "enum"):
        """A signed enum value; with `names`, its name (or the number if unknown)."""
        v = self.int32(what)
        if names is None:
            return v
        return names.get(v, v)

    # -- opaque data and strings ----------------------------------------------------------
    def fopaque(self, n: int, what: str = "opaque") -> bytes:
        """Fixed-length opaque of n bytes (plus padding)."""
        self._need(n + _pad(n), what)
        v = bytes(self._buf[self.pos:self.pos + n])
        self.pos += n + _pad(n)
        return v

    def opaque(self, what: str = "opaque", max_len: int | None = None) -> bytes:
        """Variable-length opaque: the length is checked against what is left (and max_len)
        before any byte is copied."""
        start, buf = self.pos, self._buf
        try:
            n = _U32.unpack_from(buf, start)[0]
        except struct.error:
            self._need(4, f"{what} length")
            raise
        end = start + 4 + n
        padded = end + (-n & 3)
        if padded > len(buf) or (max_len is not None and n > max_len):
            self._bad_length(what, n, max_len, start)
        self.pos = padded
        return bytes(buf[start + 4:end])

    def skip_opaque(self, what: str = "opaque") -> int:
        """Skip a variable-length opaque; returns its length."""
        start, buf = self.pos, self._buf
        try:
            n = _U32.unpack_from(buf, start)[0]
        except struct.error:
            self._need(4, f"{what} length")
            raise
        padded = start + 4 + n + (-n & 3)
        if padded > len(buf):
            self._bad_length(what, n, None, start)
        self.pos = padded
        return n

    def _bad_length(self, what: str, n: int, max_len: int | None, start: int):
        if max_len is not None and n > max_len:
            raise DecodeError(f"{what}: length {n} exceeds the limit {max_len} at offset {self.base + start}")
        raise DecodeError(f"{what}: length {n} but only {len(self._buf) - start - 4} bytes left "
                          f"at offset {self.base + start}")

    def string(self, what: str = "string", max_len: int | None = None) -> str:
        """An XDR string, decoded as UTF-8 with undecodable bytes and control characters
        escaped (never raises on content). A trailing NUL, which Gluster often sends, is
        dropped."""
        raw = self.opaque(what, max_len)
        if raw.endswith(b"\0"):
            raw = raw[:-1]
        return safe_text(raw.decode("utf-8", "backslashreplace"))

    # -- composites -------------------------------------------------------------------------
    def array(self, item: Callable[["Unpacker"], T], what: str = "array",
              max_count: int = DEFAULT_MAX_COUNT, min_item_size: int = 4) -> list[T]:
        """A counted array. The count is checked against the cap and against the bytes left
        (each XDR item takes at least `min_item_size` bytes) before the list grows."""
        start = self.pos
        try:
            n = _U32.unpack_from(self._buf, start)[0]
        except struct.error:
            self._need(4, f"{what} count")
            raise
        self.pos = start + 4
        if n > max_count:
            raise DecodeError(f"{what}: {n} elements exceed the limit {max_count} at offset {self.base + start}")
        if n * min_item_size > len(self._buf) - self.pos:
            raise DecodeError(f"{what}: {n} elements cannot fit in the {len(self._buf) - self.pos} bytes left "
                              f"at offset {self.base + start}")
        return [item(self) for _ in range(n)]

    def optional(self, item: Callable[["Unpacker"], T], what: str = "optional") -> T | None:
        """XDR optional data (`type *name`): a boolean, then the item when it is TRUE."""
        return item(self) if self.bool(f"{what} present") else None

    def linked_list(self, item: Callable[["Unpacker"], T], what: str = "list",
                    max_count: int = DEFAULT_MAX_LINKED) -> list[T]:
        """A list encoded as `struct x { ...; x *next; }` behind an optional pointer.

        `item` reads one element without its trailing `next` pointer."""
        out: list[T] = []
        while self.bool(f"{what} next"):
            if len(out) >= max_count:
                raise DecodeError(f"{what}: more than {max_count} entries at {self.where()}")
            out.append(item(self))
        return out


class Packer:
    """Builds XDR bytes (used to frame test messages and synthetic traffic)."""

    def __init__(self):
        self._parts: list[bytes] = []

    def bytes(self) -> bytes:
        return b"".join(self._parts)

    def uint32(self, v: int) -> "Packer":
        self._parts.append(_U32.pack(v & 0xFFFFFFFF))
        return self

    def int32(self, v: int) -> "Packer":
        self._parts.append(_I32.pack(v))
        return self

    def uint64(self, v: int) -> "Packer":
        self._parts.append(_U64.pack(v & 0xFFFFFFFFFFFFFFFF))
        return self

    def int64(self, v: int) -> "Packer":
        self._parts.append(_I64.pack(v))
        return self

    def double(self, v: float) -> "Packer":
        self._parts.append(_F64.pack(v))
        return self

    def bool(self, v: bool) -> "Packer":
        return self.uint32(1 if v else 0)

    def fopaque(self, data: bytes) -> "Packer":
        self._parts.append(bytes(data) + b"\0" * _pad(len(data)))
        return self

    def opaque(self, data: bytes) -> "Packer":
        self.uint32(len(data))
        return self.fopaque(data)

    def string(self, s: str | bytes) -> "Packer":
        return self.opaque(s.encode() if isinstance(s, str) else s)

    def raw(self, data: bytes) -> "Packer":
        """Bytes as they are (already XDR, or deliberately broken)."""
        self._parts.append(bytes(data))
        return self
