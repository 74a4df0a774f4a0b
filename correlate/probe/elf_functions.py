"""Find where a function lives inside an ELF shared object, with only the standard library.

Resolution order (the first that answers wins; each answer names its method):

1. ``dynsym``      the dynamic symbol table (exported functions such as glfs_utimens);
2. ``symtab``      the full symbol table, when the file is not stripped;
3. ``debuginfo``   the symbol table of a separate debug file found by build-id or
                   .gnu_debuglink under /usr/lib/debug;
4. ``eh_frame+plt`` for a static function in a stripped file: the one function, bounded by
                   an .eh_frame FDE, whose code calls every PLT stub named in ``calls``
                   (Samba's static vfs_gluster_fntimes is the function that calls both
                   glfs_futimens@plt and glfs_utimens@plt).

Also what the code of a function spans and which functions it calls (wrappers.py,
trap_sites.py). The file is read by elfsym.py, bounded: a damaged file gives ElfError.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorrelateError
from .elfsym import (SHT_DYNSYM, SHT_SYMTAB, STT_FUNC, STT_GNU_IFUNC, ElfError, ElfFile, Symbol,
                     load_elf)

DEBUG_ROOT = Path("/usr/lib/debug")


@dataclass(frozen=True)
class Resolution:
    """Where a function is: `address` is the ELF virtual address (what bcc's addr= takes)."""
    path: str
    function: str
    address: int
    file_offset: int
    method: str            # dynsym | symtab | debuginfo | eh_frame+plt | offset
    detail: str = ""


def find_symbol(symbols: list[Symbol], name: str) -> Symbol | None:
    """`name` is the default version (what a program linked today calls); `name@VERSION`
    is that exact version (what older programs call)."""
    name, _, version = name.partition("@")
    found = [s for s in symbols if s.name == name and s.type in (STT_FUNC, STT_GNU_IFUNC) and s.value]
    if version:
        return next((s for s in found if s.version == version), None)
    return next((s for s in found if s.default), found[0] if found else None)


def debug_files(elf: ElfFile) -> list[str]:
    """Candidate separate debug files, by build-id first, then .gnu_debuglink."""
    out = []
    bid = elf.build_id()
    if bid and len(bid) > 2:
        out.append(str(DEBUG_ROOT / ".build-id" / bid[:2] / (bid[2:] + ".debug")))
    link = elf.debuglink()
    if link:
        real = os.path.realpath(elf.path)
        d = os.path.dirname(real)
        out += [os.path.join(d, link), os.path.join(d, ".debug", link),
                str(DEBUG_ROOT) + os.path.join(d, link)]
    return [p for p in out if os.path.isfile(p) and os.path.realpath(p) != os.path.realpath(elf.path)]


def functions_calling(elf: ElfFile, callees: tuple[str, ...]) -> list[tuple[int, int]]:
    """FDE-bounded functions whose code calls or jumps to the PLT stub of every name in callees.

    Looks for `call rel32` (e8), `jmp rel32` (e9, tail calls) to the stub and, for code
    built with -fno-plt, `call/jmp *slot(%rip)` (ff 15 / ff 25) to the GOT slot."""
    stubs = elf.plt_stubs()
    slots = {addr: name for addr, name in elf.plt_relocations().items()}
    wanted_stub = {stubs[c]: c for c in callees if c in stubs}
    wanted_slot = {a: n for a, n in slots.items() if n in callees}
    if not wanted_stub and not wanted_slot:
        return []
    # The PLT itself has an FDE and "calls" every stub: never a candidate.
    plt = [(s.addr, s.addr + s.size) for s in elf.sections if s.name.startswith(".plt")]
    found = []
    for start, end in elf.fde_ranges():
        if any(lo < end and start < hi for lo, hi in plt):
            continue
        seen: set[str] = set()
        for _kind, target, through_slot in branches(elf.read_vaddr(start, end - start), start):
            name = (wanted_slot if through_slot else wanted_stub).get(target)
            if name:
                seen.add(name)
        if seen >= set(callees):
            found.append((start, end))
    return found


def function_span(elf: ElfFile, address: int, limit: int) -> tuple[int, int] | None:
    """[start, end) of the function at `address`: its symbol's size, else its FDE; None
    when neither says or it is larger than `limit` bytes."""
    try:
        for table in (SHT_DYNSYM, SHT_SYMTAB):
            for sym in elf.symbols(table):
                if sym.value == address and 0 < sym.size <= limit:
                    return address, address + sym.size
        for start, end in elf.fde_ranges():
            if start == address and 0 < end - start <= limit:
                return start, end
    except ElfError:
        return None
    return None


def branches(code: bytes, start: int):
    """("call" or "jump", target, through_slot) for every `call/jmp rel32` (e8, e9) and
    `call/jmp *slot(%rip)` (ff 15, ff 25; target is the slot) found at any byte of `code`,
    which starts at virtual address `start`. Byte-wise, so it may see a pattern inside
    another instruction; callers look for exact targets, which makes that harmless."""
    for i in range(len(code) - 4):
        op = code[i]
        if op in (0xE8, 0xE9) and i + 5 <= len(code):
            yield ("call" if op == 0xE8 else "jump",
                   start + i + 5 + struct.unpack_from("<i", code, i + 1)[0], False)
        elif op == 0xFF and i + 6 <= len(code) and code[i + 1] in (0x15, 0x25):
            yield ("call" if code[i + 1] == 0x15 else "jump",
                   start + i + 6 + struct.unpack_from("<i", code, i + 2)[0], True)


def resolve_in_file(path: str, function: str, calls: tuple[tuple[str, ...], ...] = ()) -> Resolution:
    """Resolve `function` in the ELF file at `path` (see the module doc for the order).

    `calls` lists alternative sets of imported functions that identify the function in a
    stripped file; the first set that matches exactly one function wins."""
    elf = load_elf(path)

    def done(addr: int, method: str, detail: str = "") -> Resolution:
        off = elf.vaddr_to_offset(addr)
        return Resolution(path, function, addr, addr if off is None else off, method, detail)

    sym = find_symbol(elf.symbols(SHT_DYNSYM), function)
    if sym:
        return done(sym.value, "dynsym")
    sym = find_symbol(elf.symbols(SHT_SYMTAB), function)
    if sym:
        return done(sym.value, "symtab")
    tried_debug = debug_files(elf)
    for dbg in tried_debug:
        try:
            sym = find_symbol(load_elf(dbg).symbols(SHT_SYMTAB), function)
        except ElfError:
            continue
        if sym:
            return done(sym.value, "debuginfo", dbg)
    problems = []
    for callees in calls:
        hits = functions_calling(elf, callees)
        plts = "+".join(f"{c}@plt" for c in callees)
        if len(hits) == 1:
            start, end = hits[0]
            return done(start, "eh_frame+plt", f"FDE {start:#x}-{end:#x} calls {plts}")
        problems.append(f"{len(hits)} functions call {plts}")
    where = "not in .dynsym or .symtab"
    where += ", no debug file" if not tried_debug else f", not in {', '.join(tried_debug)}"
    if problems:
        where += "; " + "; ".join(problems)
    raise SymbolNotFound(f"{function} in {path}: {where}")


class SymbolNotFound(CorrelateError):
    """The function could not be located; the message says what was tried."""
