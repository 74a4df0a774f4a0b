"""Struct offsets read from the probed binary's own machine code.

Samba's `files_struct` changes between builds, so `fsp->fsp_name` has no fixed offset. But
vfs_gluster_fntimes itself passes `fsp->fsp_name->base_name` to glfs_utimens, and the
instructions that do it carry the offset. On x86-64 gcc emits, before `call glfs_utimens@plt`:

    mov  %rsi, %rB            (prologue: keep fsp, the 2nd argument, in a callee-saved reg)
    mov  OFF(%rB), %rX        (X = fsp->fsp_name)
    mov  (%rX), %rsi          (2nd argument of glfs_utimens = fsp_name->base_name)

Each link is checked on the bytes (register numbers included); any other shape gives None,
and the probe then goes without the path instead of reading a guessed address.
"""
from __future__ import annotations

import struct

from .elfsym import ElfFile

RSI = 6
WINDOW = 48      # bytes searched before each step


def _reg(rex: int, bits: int, ext_bit: int) -> int:
    return bits | (8 if rex & ext_bit else 0)


def _loads_into_rsi_from(code: bytes, call_at: int) -> list[tuple[int, int]]:
    """(position, base register X) of `mov (%rX),%rsi` shortly before call_at."""
    hits = []
    for i in range(max(0, call_at - WINDOW), call_at - 2):
        rex, op, modrm = code[i], code[i + 1], code[i + 2]
        if rex & 0xF8 != 0x48 or op != 0x8B or i + 3 > call_at:
            continue
        mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
        if mod == 0 and rm not in (4, 5) and _reg(rex, reg, 4) == RSI:
            hits.append((i, _reg(rex, rm, 1)))
    return hits


def _loads_from_disp(code: bytes, before: int, dest: int) -> list[tuple[int, int]]:
    """(base register B, displacement) of `mov OFF(%rB),%r<dest>` shortly before `before`."""
    hits = []
    for i in range(max(0, before - WINDOW), before - 3):
        rex, op, modrm = code[i], code[i + 1], code[i + 2]
        if rex & 0xF8 != 0x48 or op != 0x8B:
            continue
        mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
        if rm == 4 or mod not in (1, 2) or _reg(rex, reg, 4) != dest:
            continue
        if mod == 1 and i + 4 <= before:
            hits.append((_reg(rex, rm, 1), struct.unpack_from("<b", code, i + 3)[0]))
        elif mod == 2 and i + 7 <= before:
            hits.append((_reg(rex, rm, 1), struct.unpack_from("<i", code, i + 3)[0]))
    return hits


def _saves_rsi_into(code: bytes, reg: int, prologue: int = 64) -> bool:
    """`mov %rsi,%r<reg>` (89 /r, mod=11) among the first bytes of the function."""
    for i in range(0, min(prologue, len(code) - 2)):
        rex, op, modrm = code[i], code[i + 1], code[i + 2]
        if rex & 0xF8 == 0x48 and op == 0x89 and modrm >> 6 == 3 \
                and _reg(rex, (modrm >> 3) & 7, 4) == RSI and _reg(rex, modrm & 7, 1) == reg:
            return True
    return False


def fsp_name_offset(elf: ElfFile, address: int) -> int | None:
    """Offset of fsp_name in files_struct, from the function at `address` (vfs_gluster_fntimes)."""
    rng = next(((s, e) for s, e in elf.fde_ranges() if s <= address < e), None)
    stub = elf.plt_stubs().get("glfs_utimens")
    if rng is None or stub is None:
        return None
    start, end = rng
    code = elf.read_vaddr(start, end - start)
    found = set()
    for i in range(len(code) - 4):
        if code[i] != 0xE8 or start + i + 5 + struct.unpack_from("<i", code, i + 1)[0] != stub:
            continue
        for pos, x in _loads_into_rsi_from(code, i):
            for base, disp in _loads_from_disp(code, pos, x):
                if disp > 0 and _saves_rsi_into(code, base):
                    found.add(disp)
    return found.pop() if len(found) == 1 else None


# layout name -> finder(elf, function address) -> offset or None
FINDERS = {"files_struct.fsp_name": fsp_name_offset}


def resolve_offsets(elf: ElfFile, address: int, names: set[str]) -> dict[str, int | None]:
    return {name: (FINDERS[name](elf, address) if name in FINDERS else None) for name in names}
