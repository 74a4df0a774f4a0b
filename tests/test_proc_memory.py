"""The collector's reader of a running call's memory (correlate/probe/proc_memory.py), on this
process's own memory: strings, pointer hops, struct words, and unreadable memory."""
from __future__ import annotations

import ctypes
import mmap
import os

from correlate.probe.catalog import MAX_STR
from correlate.probe.proc_memory import ProcessMemory


def _address(buf) -> int:
    return ctypes.addressof(buf)


def test_strings_pointer_hops_and_struct_words():
    text = ctypes.create_string_buffer(b"/some/path")
    holder = (ctypes.c_uint64 * 4)(0, 0, _address(text), 0)      # *(holder + 16) -> text
    outer = (ctypes.c_uint64 * 1)(_address(holder))                # *(outer + 0) -> holder
    times = (ctypes.c_int64 * 4)(-1, 0, 1700000000, 500)
    with ProcessMemory(os.getpid()) as memory:
        assert memory.string(_address(text)) == b"/some/path"
        assert memory.string(_address(outer), (0, 16)) == b"/some/path"
        assert memory.struct_words("timespec2", _address(times)) == [-1, 0, 1700000000, 500]
        stat = (ctypes.c_int64 * 11)(*range(100, 111))
        # glfs_stat: mask at 0, atime at 0x18 (words 3-4), mtime at 0x48 (words 9-10)
        assert memory.struct_words("glfs_stat", _address(stat)) == [100, 103, 104, 109, 110]
        assert memory.string(0) is None and memory.string(_address(outer), (0, 8)) is None
        assert memory.struct_words("timespec2", 8) is None


def test_a_long_string_is_cut_as_the_program_cuts_it():
    long = ctypes.create_string_buffer(b"x" * 1000)
    with ProcessMemory(os.getpid()) as memory:
        assert memory.string(_address(long)) == b"x" * (MAX_STR - 1)


def test_a_string_next_to_an_unmapped_page():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          ctypes.c_long)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    page = mmap.PAGESIZE
    base = libc.mmap(None, 2 * page, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    try:
        assert libc.munmap(base + page, page) == 0                 # the second page is gone
        ctypes.memmove(base + page - 12, b"abcdefghend\0", 12)
        with ProcessMemory(os.getpid()) as memory:
            # ends before the unmapped page: read a page at a time, so it is whole
            assert memory.string(base + page - 12) == b"abcdefghend"
            # runs into it: unreadable, as bpf_probe_read_user_str would say
            ctypes.memmove(base + page - 1, b"!", 1)
            assert memory.string(base + page - 12) is None
            assert memory.struct_words("timespec2", base + page - 16) is None
    finally:
        libc.munmap(base, page)
    assert ProcessMemory(0).read(4096, 8) is None              # no such process: None
