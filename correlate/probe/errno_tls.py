"""How a probe reads errno: the constants the BPF program's read_errno() needs.

glibc keeps errno in thread-local storage. For a thread, `&errno` is `fsbase + TPOFF`:
`__errno_location` is `mov TPOFF_GOT(%rip),%rax; add %fs:0,%rax; ret`, and TPOFF (fixed
per process once the dynamic linker laid out static TLS) sits in libc's GOT. At a failed
return the probe program follows, in the probed process:

1. the probed library's GOT slot for `__errno_location` (bound at load time) -> the
   function's address in this process; its first 8 bytes must equal the libc file's;
2. the GOT word that instruction loads -> TPOFF;
3. the thread's fsbase, `task_struct.thread.fsbase`, at the offset the running kernel's
   BTF gives (the kernel headers bcc compiles against may be another build's);
4. the int at fsbase + TPOFF: errno exactly as the caller will read it.

Any link that does not check out leaves errno unread (the event has no `errno`); it is
never guessed. Probing `__errno_location` itself would also work, but libgfapi calls it
on every fop (DECODE_SYNCOP_ERR sets errno = 0 on success) and a uprobe hit costs several
microseconds.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache

from .btf import BtfError, member_offset
from .elf_functions import find_symbol
from .elfsym import ElfError, SHT_DYNSYM, load_elf

LIBC = "libc.so.6"
ENDBR64 = b"\xf3\x0f\x1e\xfa"
MOV_RIP_RAX = b"\x48\x8b\x05"                          # mov disp32(%rip),%rax
ADD_FS0_RAX = b"\x64\x48\x03\x04\x25\x00\x00\x00\x00"  # add %fs:0x0,%rax


@dataclass(frozen=True)
class LibcErrno:
    fn_vaddr: int      # __errno_location in the libc file
    fn_code: int       # its first 8 bytes, little-endian (checked in the process)
    tpoff_vaddr: int   # the GOT word holding errno's TP offset
    fsbase_off: int    # task_struct.thread.fsbase


def libc_errno_code(code: bytes, fn_vaddr: int) -> int | None:
    """The vaddr of the TP-offset GOT word, if `code` is glibc's x86-64 __errno_location."""
    at = len(ENDBR64) if code.startswith(ENDBR64) else 0
    if code[at:at + 3] != MOV_RIP_RAX or len(code) < at + 7 + len(ADD_FS0_RAX):
        return None
    disp = struct.unpack_from("<i", code, at + 3)[0]
    if code[at + 7:at + 7 + len(ADD_FS0_RAX)] != ADD_FS0_RAX:
        return None
    return fn_vaddr + at + 7 + disp


@lru_cache(maxsize=4)
def libc_errno(libc_path: str) -> tuple[LibcErrno | None, str]:
    """(constants, "") or (None, why errno cannot be read)."""
    try:
        elf = load_elf(libc_path)
        sym = find_symbol(elf.symbols(SHT_DYNSYM), "__errno_location")
        if sym is None:
            return None, f"{libc_path} exports no __errno_location"
        code = elf.read_vaddr(sym.value, 32)
    except ElfError as exc:
        return None, str(exc)
    tpoff = libc_errno_code(code, sym.value)
    if tpoff is None or len(code) < 8:
        return None, f"__errno_location in {libc_path} is not the expected TLS access"
    try:
        fsbase = member_offset("task_struct", "thread", "fsbase")
    except BtfError as exc:
        return None, f"the thread pointer's place in task_struct is unknown: {exc}"
    return LibcErrno(sym.value, struct.unpack_from("<Q", code)[0], tpoff, fsbase), ""


@lru_cache(maxsize=32)
def errno_slot(library_path: str) -> int | None:
    """The GOT slot through which `library_path` calls __errno_location, if it does."""
    try:
        slots = load_elf(library_path).plt_relocations()
    except ElfError:
        return None
    return next((addr for addr, name in slots.items() if name == "__errno_location"), None)
