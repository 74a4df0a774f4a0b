"""A running call's arguments, read from its process's memory by the collector.

An emit="slow" probe keeps only the call's registers (struct entry_t in
probes/uprobe_events.c): copying strings and structs at every call of a hot function cost
more than the rest of its program. When the collector finds a call that has run slow_ns already, it
sends it while it still runs, and reads what the pointers point to here, through
/proc/PID/mem (root), the way the BPF readers would: the same bounds, the same struct
layouts (catalog.STRUCT_WORDS), a flag instead of an error when memory is unreadable.
"""
from __future__ import annotations

import os

from .catalog import MAX_STR, STRUCT_WORDS

PAGE = 4096
MAX_HOPS = 4


def thread_name(pid: int, tid: int) -> str:
    """The thread's comm, or "" once it is gone."""
    try:
        with open(f"/proc/{int(pid)}/task/{int(tid)}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


class ProcessMemory:
    """Reads from one process; every method returns None where the memory is unreadable."""

    def __init__(self, pid: int):
        try:
            self.fd = os.open(f"/proc/{int(pid)}/mem", os.O_RDONLY)
        except OSError:
            self.fd = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "ProcessMemory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, address: int, size: int) -> bytes | None:
        if self.fd is None or not 0 < address < 1 << 63 or size <= 0:
            return None
        try:
            data = os.pread(self.fd, size, address)
        except OSError:
            return None
        return data if len(data) == size else None

    def pointer(self, address: int, offset: int) -> int | None:
        raw = self.read(address + offset, 8) if address else None
        return int.from_bytes(raw, "little") if raw else None

    def string(self, address: int, hops: tuple[int, ...] = ()) -> bytes | None:
        """The NUL-terminated string at address (after `hops`: p = *(p + off) each), at most
        MAX_STR - 1 bytes, as bpf_probe_read_user_str reads it; read a page at a time, so a
        string that ends before an unmapped page is still read."""
        for offset in hops[:MAX_HOPS]:
            address = self.pointer(address, offset)
            if not address:
                return None
        out = b""
        while address and len(out) < MAX_STR - 1:
            chunk = self.read(address, min(PAGE - address % PAGE, MAX_STR - 1 - len(out)))
            if chunk is None:
                return out if b"\0" in out else None
            end = chunk.find(b"\0")
            if end >= 0:
                return out + chunk[:end]
            out += chunk
            address += len(chunk)
        return out if address else None

    def struct_words(self, kind: str, address: int) -> list[int] | None:
        """The signed 8-byte words a struct kind reads (catalog.STRUCT_WORDS), or None."""
        words: list[int] = []
        for offset, count in STRUCT_WORDS[kind]:
            raw = self.read(address + offset, 8 * count) if address else None
            if raw is None:
                return None
            words += [int.from_bytes(raw[i:i + 8], "little", signed=True) for i in range(0, len(raw), 8)]
        return words
