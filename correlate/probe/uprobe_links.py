"""Attach uprobe programs through BPF links of the uprobe_multi kind (Linux 6.6+) instead
of bcc's perf-event uprobes.

A perf-event uprobe runs its program through the perf and trace_uprobe layers at every hit;
a uprobe_multi link calls the program from the uprobe consumer directly. The trap is the
same int3 either way. The program must be loaded for the link's attach type (bcc's
load_func takes it), and the link is made with the bpf(2) syscall, which bcc 0.26 does not
wrap for this kind. Closing the link's fd detaches it.
"""
from __future__ import annotations

import ctypes
import os
import struct
from functools import lru_cache

from .elfsym import ElfError, load_elf
from .errors import ProbeError

SYS_BPF = 321                    # x86-64
BPF_LINK_CREATE = 28             # enum bpf_cmd
BPF_TRACE_UPROBE_MULTI = 48      # enum bpf_attach_type (Linux 6.6)
BPF_F_UPROBE_MULTI_RETURN = 1
ATTR_SIZE = 64                   # link_create up to uprobe_multi.pid; the kernel zero-fills the rest

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@lru_cache(maxsize=8)
def _elf(path: str):
    return load_elf(path)     # read once for all the sites of a library


def file_offset(path: str, vaddr: int) -> int:
    """uprobe_multi takes file offsets; the plan has ELF virtual addresses."""
    try:
        offset = _elf(path).vaddr_to_offset(vaddr)
    except (ElfError, OSError) as exc:
        raise ProbeError(f"{path}: {exc}") from None
    if offset is None:
        raise ProbeError(f"{path}: {vaddr:#x} is in no loaded segment")
    return offset


def link_uprobe(prog_fd: int, path: str, vaddr: int, retprobe: bool = False) -> int:
    """A uprobe_multi link of one site: the program at `vaddr` of `path` (its return, with
    `retprobe`), in every process. The link's own pid filter is not used: in the lab
    workload it cost the probed client more than the program's check of the pid does
    (bench/probe_overhead.py --pid-filter: 1.044x and 1.065x with it, 1.031x without).
    Returns the link's fd; ProbeError when refused."""
    path_buf = ctypes.create_string_buffer(os.fsencode(path))
    offsets = (ctypes.c_uint64 * 1)(file_offset(path, vaddr))
    attr = ctypes.create_string_buffer(ATTR_SIZE)
    struct.pack_into("IIII", attr, 0, prog_fd, 0, BPF_TRACE_UPROBE_MULTI, 0)
    struct.pack_into("QQQQIII", attr, 16, ctypes.addressof(path_buf), ctypes.addressof(offsets),
                     0, 0, 1, BPF_F_UPROBE_MULTI_RETURN if retprobe else 0, 0)
    fd = _libc.syscall(SYS_BPF, BPF_LINK_CREATE, attr, ATTR_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise ProbeError(f"the kernel refused a uprobe_multi link at {vaddr:#x} in {path}: "
                         f"{os.strerror(err)}")
    return fd


class LinksRefused(ProbeError):
    """This kernel (or bcc) gives no uprobe_multi links: attach through perf events."""


def attach_links(bpf, sites: list[tuple[str, str, int, bool]]) -> list[int]:
    """Link each (program name, library path, address, as a return) and return the links'
    fds. LinksRefused, with the links made so far closed, when the kernel refuses one."""
    from bcc import BPF
    links: list[int] = []
    try:
        for name, path, address, retprobe in sites:
            try:
                fn = bpf.load_func(name.encode(), BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
            except Exception as exc:   # bcc raises plain Exception when the kernel refuses it
                raise LinksRefused(f"the kernel refused a program for uprobe_multi links: "
                                   f"{str(exc).splitlines()[0]}") from None
            try:
                links.append(link_uprobe(fn.fd, path, address, retprobe))
            except ProbeError as exc:
                raise LinksRefused(str(exc)) from None
    except LinksRefused:
        close_links(links)
        raise
    return links


def close_links(links: list[int]) -> None:
    for fd in links:
        try:
            os.close(fd)
        except OSError:
            pass
    links.clear()
