"""Member offsets of kernel structures from the running kernel's BTF (/sys/kernel/btf/vmlinux).

bcc compiles probe programs against kernel headers that may come from another kernel build
(on the development VM, Debian's 6.1 headers for a 6.18 kernel), so `task->thread.fsbase`
written in the C would use the headers' layout, not the running kernel's. BTF describes the
running kernel: the probe program reads the thread pointer at the offset found here.

The format is include/uapi/linux/btf.h: a header, then type records (each a 12-byte
`btf_type` plus kind-specific data) and a string table. The file is read, never trusted:
every read is bounded and a damaged file gives BtfError.
"""
from __future__ import annotations

import struct
from functools import lru_cache

VMLINUX = "/sys/kernel/btf/vmlinux"
BTF_MAGIC = 0xEB9F
MAX_BYTES = 64 * 1024 * 1024
KIND_STRUCT, KIND_UNION = 4, 5
# Bytes of data after the 12-byte btf_type, per kind: fixed, and per vlen entry.
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ENTRY = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
MAX_KIND = 19
MAX_ANONYMOUS_DEPTH = 8      # nested anonymous structs/unions looked into


class BtfError(Exception):
    """The BTF could not be read or lacks the member; the message says which."""


def _parse(data: bytes) -> tuple[dict[str, list[int]], dict[int, int], bytes, bytes]:
    """Index the struct/union records by name: name -> [type offsets], type id -> offset."""
    if len(data) < 24:
        raise BtfError("BTF is shorter than its header")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != BTF_MAGIC:
        raise BtfError(f"bad BTF magic {magic:#x}")
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    types = data[hdr_len + type_off:hdr_len + type_off + type_len]
    strings = data[hdr_len + str_off:hdr_len + str_off + str_len]
    if len(types) != type_len or len(strings) != str_len:
        raise BtfError("BTF sections run past the end of the file")
    by_name: dict[str, list[int]] = {}
    by_id: dict[int, int] = {}
    pos, type_id = 0, 1
    while pos + 12 <= len(types):
        name_off, info = struct.unpack_from("<II", types, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == 0 or kind > MAX_KIND:
            raise BtfError(f"unknown BTF kind {kind} at type {type_id}")
        if kind in (KIND_STRUCT, KIND_UNION):
            by_id[type_id] = pos
            by_name.setdefault(_string(strings, name_off), []).append(pos)
        pos += 12 + _FIXED.get(kind, 0) + _PER_ENTRY.get(kind, 0) * vlen
        type_id += 1
    return by_name, by_id, types, strings


def _string(strings: bytes, off: int) -> str:
    end = strings.find(b"\0", off, off + 256)
    return strings[off:end if end >= 0 else off].decode("ascii", "replace")


def _member(types: bytes, strings: bytes, by_id: dict[int, int], pos: int, name: str,
            depth: int = 0) -> tuple[int, int] | None:
    """(byte offset, member type id) of `name` in the struct record at `pos`, looking into
    its anonymous struct and union members too (sock_common's skc_daddr lies in two)."""
    info = struct.unpack_from("<I", types, pos + 4)[0]
    kind_flag, vlen = info >> 31, info & 0xFFFF
    for i in range(vlen):
        at = pos + 12 + 12 * i
        if at + 12 > len(types):
            break
        name_off, type_id, offset = struct.unpack_from("<III", types, at)
        bits = offset & 0xFFFFFF if kind_flag else offset
        if bits % 8:
            continue
        member = _string(strings, name_off)
        if member == name:
            return bits // 8, type_id
        if not member and type_id in by_id and depth < MAX_ANONYMOUS_DEPTH:
            inner = _member(types, strings, by_id, by_id[type_id], name, depth + 1)
            if inner is not None:
                return bits // 8 + inner[0], inner[1]
    return None


@lru_cache(maxsize=8)
def member_offset(struct_name: str, *members: str, path: str = VMLINUX) -> int:
    """Byte offset of struct_name.m1.m2... (each inner member a struct), e.g.
    member_offset("task_struct", "thread", "fsbase")."""
    return member_offsets([(struct_name, *members)], path=path)[0]


def member_offsets(queries: list[tuple[str, ...]], path: str = VMLINUX) -> list[int]:
    """member_offset of each (struct_name, m1, m2...), the BTF read and indexed once."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BtfError(f"cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_BYTES:
        raise BtfError(f"{path} is larger than {MAX_BYTES} bytes")
    try:
        parsed = _parse(data)
        return [_offset(parsed, query[0], query[1:], path) for query in queries]
    except struct.error as exc:
        raise BtfError(f"damaged BTF in {path}: {exc}") from None


def _offset(parsed, struct_name: str, members: tuple[str, ...], path: str) -> int:
    by_name, by_id, types, strings = parsed
    candidates = by_name.get(struct_name, [])
    if not candidates:
        raise BtfError(f"no struct {struct_name} in {path}")
    total, pos = 0, candidates[0]
    for i, name in enumerate(members):
        found = _member(types, strings, by_id, pos, name)
        if found is None:
            raise BtfError(f"no member {'.'.join(members[:i + 1])} in struct {struct_name} ({path})")
        off, type_id = found
        total += off
        if i + 1 < len(members):
            if type_id not in by_id:
                raise BtfError(f"{'.'.join(members[:i + 1])} is not a struct in {path}")
            pos = by_id[type_id]
    return total


@lru_cache(maxsize=8)
def struct_size(struct_name: str, path: str = VMLINUX) -> int:
    """sizeof(struct struct_name) in the running kernel (to index an array of them)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise BtfError(f"cannot read {path}: {exc.strerror}") from None
    try:
        by_name, _by_id, types, _strings = _parse(data[:MAX_BYTES])
        if not by_name.get(struct_name):
            raise BtfError(f"no struct {struct_name} in {path}")
        return struct.unpack_from("<I", types, by_name[struct_name][0] + 8)[0]
    except struct.error as exc:
        raise BtfError(f"damaged BTF in {path}: {exc}") from None
