"""Reading an ELF shared object, with only the standard library: its sections, symbol
tables with their versions, PLT stubs and relocations, build-id and debuglink, and the
function ranges of its .eh_frame (elf_functions.py finds a function with these).

The file is untrusted bytes: every table read is bounded by the file size and by fixed
limits, and a damaged file gives ElfError, never an exception from struct or an endless loop.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from ..errors import CorrelateError
from .eh_frame import MAX_FUNCTION_BYTES, parse_eh_frame

MAX_FILE_BYTES = 512 * 1024 * 1024   # larger than any library we would probe
MAX_SECTIONS = 4096
MAX_SYMBOLS = 2_000_000

SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOTE, SHT_DYNSYM, SHT_NOBITS = 2, 3, 4, 7, 11, 8
SHT_GNU_VERDEF, SHT_GNU_VERSYM = 0x6FFFFFFD, 0x6FFFFFFF
VERSYM_HIDDEN = 0x8000               # the symbol is a non-default version (name@VER, not @@)
MAX_VERDEFS = 4096
STT_FUNC, STT_GNU_IFUNC = 2, 10
PT_LOAD = 1
R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT = 7, 6
EM_X86_64 = 62


class ElfError(CorrelateError):
    """The file is not an ELF object we can read (names the file and what is wrong)."""


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int
    size: int
    type: int
    version: str = ""        # the symbol version (GFAPI_6.0), dynsym only
    default: bool = True     # False for an old version kept for old binaries (name@VER)


@dataclass
class ElfFile:
    path: str
    data: bytes
    is64: bool
    little: bool
    machine: int
    sections: list[Section] = field(default_factory=list)
    segments: list[tuple[int, int, int, int]] = field(default_factory=list)  # (type, off, vaddr, filesz)

    # ---- reading primitives (bounded) -----------------------------------------------------
    def _fmt(self, code: str) -> str:
        return ("<" if self.little else ">") + code

    def unpack(self, code: str, offset: int) -> tuple:
        fmt = self._fmt(code)
        size = struct.calcsize(fmt)
        if offset < 0 or offset + size > len(self.data):
            raise ElfError(f"{self.path}: truncated (need {size} bytes at offset {offset:#x})")
        return struct.unpack_from(fmt, self.data, offset)

    def section_bytes(self, sec: Section) -> bytes:
        if sec.type == SHT_NOBITS:
            return b""
        end = sec.offset + sec.size
        if sec.offset < 0 or end > len(self.data):
            raise ElfError(f"{self.path}: section {sec.name or sec.type} runs past the end of the file")
        return self.data[sec.offset:end]

    def section(self, name: str) -> Section | None:
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def vaddr_to_offset(self, vaddr: int) -> int | None:
        for ptype, off, va, filesz in self.segments:
            if ptype == PT_LOAD and va <= vaddr < va + filesz:
                return vaddr - va + off
        for sec in self.sections:  # objects without program headers
            if sec.addr and sec.type != SHT_NOBITS and sec.addr <= vaddr < sec.addr + sec.size:
                return vaddr - sec.addr + sec.offset
        return None

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        off = self.vaddr_to_offset(vaddr)
        if off is None:
            return b""
        return self.data[off:off + max(0, min(size, MAX_FUNCTION_BYTES))]

    # ---- tables ---------------------------------------------------------------------------
    def strtab_string(self, strtab: bytes, index: int, limit: int = 4096) -> str:
        if not 0 <= index < len(strtab):
            return ""
        end = strtab.find(b"\0", index, index + limit)
        if end < 0:
            end = min(len(strtab), index + limit)
        return strtab[index:end].decode("utf-8", "replace")

    def symbols(self, sh_type: int) -> list[Symbol]:
        out: list[Symbol] = []
        for sec in self.sections:
            if sec.type != sh_type:
                continue
            if not 0 <= sec.link < len(self.sections):
                raise ElfError(f"{self.path}: symbol table links to section {sec.link}, which does not exist")
            strtab = self.section_bytes(self.sections[sec.link])
            raw = self.section_bytes(sec)
            entsize = sec.entsize or (24 if self.is64 else 16)
            if entsize < (24 if self.is64 else 16):
                raise ElfError(f"{self.path}: symbol entry size {entsize} is too small")
            count = min(len(raw) // entsize, MAX_SYMBOLS)
            fmt = self._fmt("IBBHQQ" if self.is64 else "IIIBBH")
            versym, verdefs = self._versions() if sh_type == SHT_DYNSYM else (b"", {})
            for i in range(count):
                fields = struct.unpack_from(fmt, raw, i * entsize)
                if self.is64:
                    name_i, info, _other, _shndx, value, size = fields
                else:
                    name_i, value, size, info, _other, _shndx = fields
                name, _, version = self.strtab_string(strtab, name_i).partition("@")
                default = not version.startswith("@") if version else True
                version = version.lstrip("@")
                if 2 * i + 2 <= len(versym):
                    ndx = struct.unpack_from(self._fmt("H"), versym, 2 * i)[0]
                    version = verdefs.get(ndx & ~VERSYM_HIDDEN, version)
                    default = not ndx & VERSYM_HIDDEN
                out.append(Symbol(name, value, size, info & 0xF, version, default))
        return out

    def _versions(self) -> tuple[bytes, dict[int, str]]:
        """.gnu.version (one half-word per dynsym entry) and the names .gnu.version_d gives
        each version index. A library exports old versions of a function beside the default
        one (glfs_pread@GFAPI_3.4.0 and glfs_pread@@GFAPI_6.0): the index tells them apart."""
        versym_sec = next((s for s in self.sections if s.type == SHT_GNU_VERSYM), None)
        verdef_sec = next((s for s in self.sections if s.type == SHT_GNU_VERDEF), None)
        if versym_sec is None:
            return b"", {}
        names: dict[int, str] = {}
        if verdef_sec is not None and 0 <= verdef_sec.link < len(self.sections):
            strtab = self.section_bytes(self.sections[verdef_sec.link])
            raw = self.section_bytes(verdef_sec)
            pos = 0
            for _ in range(MAX_VERDEFS):
                if pos + 20 > len(raw):
                    break
                _ver, _flags, ndx, cnt, _hash, aux, nxt = struct.unpack_from(self._fmt("HHHHIII"), raw, pos)
                if cnt and pos + aux + 8 <= len(raw):
                    names[ndx] = self.strtab_string(strtab, struct.unpack_from(self._fmt("I"), raw, pos + aux)[0])
                if nxt == 0:
                    break
                pos += nxt
        return self.section_bytes(versym_sec), names

    def plt_relocations(self) -> dict[int, str]:
        """GOT slot address -> imported function name, from .rela.plt (and .rela.dyn GLOB_DAT)."""
        dynsym_sec = next((s for s in self.sections if s.type == SHT_DYNSYM), None)
        if dynsym_sec is None or not self.is64:
            return {}
        dynsyms = self.symbols(SHT_DYNSYM)
        slots: dict[int, str] = {}
        for sec in self.sections:
            if sec.type != SHT_RELA:
                continue
            raw = self.section_bytes(sec)
            entsize = sec.entsize or 24
            if entsize < 24:
                continue
            for i in range(min(len(raw) // entsize, MAX_SYMBOLS)):
                r_offset, r_info, _addend = struct.unpack_from(self._fmt("QQq"), raw, i * entsize)
                rtype, symi = r_info & 0xFFFFFFFF, r_info >> 32
                if rtype in (R_X86_64_JUMP_SLOT, R_X86_64_GLOB_DAT) and 0 < symi < len(dynsyms):
                    slots[r_offset] = dynsyms[symi].name
        return slots

    def plt_stubs(self) -> dict[str, int]:
        """Imported function name -> address of the PLT stub code calls it through.

        Scans .plt, .plt.sec (IBT layout: endbr64; bnd jmp *slot) and .plt.got for the
        RIP-relative `jmp *slot(%rip)` (ff 25 rel32) of each stub, so neither the entry size
        nor the order of .rela.plt has to be trusted."""
        if self.machine != EM_X86_64:
            return {}
        slots = self.plt_relocations()
        stubs: dict[str, int] = {}
        # .plt.sec stubs are what calls target when it exists; scan it first and keep the first.
        for name, stride in ((".plt.sec", 16), (".plt.got", 8), (".plt", 16)):
            sec = self.section(name)
            if sec is None:
                continue
            code = self.section_bytes(sec)
            for start in range(0, len(code), stride):
                stub = code[start:start + stride]
                pos = stub.find(b"\xff\x25")
                if pos < 0 or pos + 6 > len(stub):
                    continue
                rel = struct.unpack_from("<i", stub, pos + 2)[0]
                slot = sec.addr + start + pos + 6 + rel
                target = slots.get(slot)
                if target and target not in stubs:
                    stubs[target] = sec.addr + start
        return stubs

    def build_id(self) -> str | None:
        for sec in self.sections:
            if sec.type != SHT_NOTE:
                continue
            raw = self.section_bytes(sec)
            pos = 0
            while pos + 12 <= len(raw):
                namesz, descsz, ntype = struct.unpack_from(self._fmt("III"), raw, pos)
                name_end = pos + 12 + ((namesz + 3) & ~3)
                desc_end = name_end + ((descsz + 3) & ~3)
                if desc_end > len(raw):
                    break
                if ntype == 3 and raw[pos + 12:pos + 12 + namesz].rstrip(b"\0") == b"GNU":
                    return raw[name_end:name_end + descsz].hex()
                pos = desc_end
        return None

    def debuglink(self) -> str | None:
        sec = self.section(".gnu_debuglink")
        if sec is None:
            return None
        raw = self.section_bytes(sec)
        name = raw.split(b"\0", 1)[0]
        return os.fsdecode(name) if name and b"/" not in name else None

    # ---- .eh_frame ------------------------------------------------------------------------
    def fde_ranges(self) -> list[tuple[int, int]]:
        """(start, end) virtual address of every function an .eh_frame FDE describes."""
        sec = self.section(".eh_frame")
        if sec is None or sec.type == SHT_NOBITS:
            return []
        return parse_eh_frame(self.section_bytes(sec), sec.addr, self.little, self.is64)


def load_elf(path: str | os.PathLike) -> ElfFile:
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ElfError(f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES} this reader accepts")
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ElfError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return parse_elf(data, path)


def parse_elf(data: bytes, path: str = "<bytes>") -> ElfFile:
    if len(data) < 16 or data[:4] != b"\x7fELF":
        raise ElfError(f"{path}: not an ELF file")
    ei_class, ei_data = data[4], data[5]
    if ei_class not in (1, 2) or ei_data not in (1, 2):
        raise ElfError(f"{path}: unknown ELF class {ei_class} or data encoding {ei_data}")
    elf = ElfFile(path, data, is64=ei_class == 2, little=ei_data == 1, machine=0)
    if elf.is64:
        (_t, machine, _v, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
         shentsize, shnum, shstrndx) = elf.unpack("HHIQQQIHHHHHH", 16)
    else:
        (_t, machine, _v, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
         shentsize, shnum, shstrndx) = elf.unpack("HHIIIIIHHHHHH", 16)
    elf.machine = machine
    if shnum > MAX_SECTIONS or phnum > MAX_SECTIONS:
        raise ElfError(f"{path}: {max(shnum, phnum)} headers is more than this reader accepts")
    # program headers (for address -> file offset)
    ph_min = 56 if elf.is64 else 32
    if phnum and phentsize >= ph_min:
        for i in range(phnum):
            off = phoff + i * phentsize
            if elf.is64:
                ptype, _fl, p_off, p_vaddr, _pa, p_filesz = elf.unpack("IIQQQQ", off)
            else:
                ptype, p_off, p_vaddr, _pa, p_filesz = elf.unpack("IIIII", off)
            elf.segments.append((ptype, p_off, p_vaddr, p_filesz))
    # section headers
    sh_min = 64 if elf.is64 else 40
    if shnum and shentsize < sh_min:
        raise ElfError(f"{path}: section header size {shentsize} is too small")
    raw_sections = []
    for i in range(shnum):
        off = shoff + i * shentsize
        if elf.is64:
            name_i, stype, _fl, addr, offset, size, link, _info, _al, entsize = elf.unpack("IIQQQQIIQQ", off)
        else:
            name_i, stype, _fl, addr, offset, size, link, _info, _al, entsize = elf.unpack("IIIIIIIIII", off)
        raw_sections.append((name_i, stype, addr, offset, size, link, entsize))
    names = b""
    if 0 <= shstrndx < len(raw_sections):
        _n, _t, _a, offset, size, _l, _e = raw_sections[shstrndx]
        if offset + size <= len(data):
            names = data[offset:offset + size]
    for name_i, stype, addr, offset, size, link, entsize in raw_sections:
        elf.sections.append(Section(elf.strtab_string(names, name_i), stype, addr, offset, size, link, entsize))
    return elf
