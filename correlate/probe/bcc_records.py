"""The bcc program's records and the events they become: ctypes mirrors of the structs
in probes/uprobe_events.c (the record the program sends, the call it keeps until the
return, a call in progress as its task iterator lists it) and their decoding into contract
events (bcc_backend.py reads them).
"""
from __future__ import annotations

import ctypes

from ..events import make_event
from ..gluster.errnos import errno_name
from .catalog import MAX_STR, STRUCT_KINDS, WORD_KINDS
from .clock import ClockMap
from .resolve import ResolvedProbe

KIND_CALL, KIND_RETURN = 0, 1
F_STR, F_STR_FAULT, F_STRUCT, F_STRUCT_FAULT, F_NO_ENTRY = 1, 2, 4, 8, 16
F_ERRNO, F_TALLY, F_FD_PATH = 32, 64, 128
FD_OPENED_UNSEEN = 1


class EventRecord(ctypes.Structure):
    """Mirror of struct event_t in probes/uprobe_events.c."""
    _fields_ = [("ts", ctypes.c_uint64), ("duration_ns", ctypes.c_uint64),
                ("retval", ctypes.c_int64), ("base", ctypes.c_uint64),
                ("ints", ctypes.c_uint64 * 4),
                ("words", ctypes.c_int64 * 11), ("pid", ctypes.c_uint32),
                ("tid", ctypes.c_uint32), ("probe_id", ctypes.c_uint32),
                ("kind", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("err", ctypes.c_int32),
                ("caller", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("comm", ctypes.c_char * 16), ("str", ctypes.c_char * MAX_STR)]


class EntryRecord(ctypes.Structure):
    """Mirror of struct entry_t in probes/uprobe_events.c (what a call keeps)."""
    _fields_ = [("ts", ctypes.c_uint64), ("base", ctypes.c_uint64), ("ints", ctypes.c_uint64 * 4),
                ("str_ptr", ctypes.c_uint64), ("struct_ptr", ctypes.c_uint64),
                ("caller", ctypes.c_uint32), ("pid", ctypes.c_uint32)]


class RunningRecord(ctypes.Structure):
    """Mirror of struct running_t: a call in progress, as the task iterator lists it."""
    _fields_ = [("tid", ctypes.c_uint32), ("pid", ctypes.c_uint32), ("probe_id", ctypes.c_uint32),
                ("pad", ctypes.c_uint32), ("call", EntryRecord)]


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


def decode_args(rp: ResolvedProbe, rec: EventRecord) -> tuple[dict, list[str]]:
    """The `args` of a call event and the names of arguments that could not be read."""
    args: dict = {}
    faults: list[str] = []
    w = list(rec.words)
    slot = 0
    for arg in rp.arguments:
        if arg.kind == "str":
            if rec.flags & F_STR:
                args[arg.name] = _text(bytes(rec.str))
                if len(args[arg.name].encode()) >= MAX_STR - 1:
                    args[arg.name + "_truncated"] = True
            else:
                args[arg.name] = None
                if rec.flags & F_STR_FAULT:
                    faults.append(arg.name)
        elif arg.kind in WORD_KINDS:
            raw = rec.ints[slot]
            slot += 1
            if arg.kind in ("ptr", "fd"):
                args[arg.name] = f"{raw:#x}"
            elif arg.kind == "int":   # the register's upper half is undefined for a C int
                args[arg.name] = ctypes.c_int32(raw & 0xFFFFFFFF).value
            else:
                args[arg.name] = ctypes.c_int64(raw).value
            if arg.kind == "fd" and rec.flags & F_FD_PATH:
                args["path"] = _text(bytes(rec.str))
        elif arg.kind in STRUCT_KINDS:
            if not rec.flags & F_STRUCT:
                if rec.flags & F_STRUCT_FAULT:
                    faults.append(arg.name)
                continue
            if arg.kind == "timespec2":
                names = ("atime", "atime_nsec", "mtime", "mtime_nsec")
            elif arg.kind == "smb_file_time":
                names = ("mtime", "mtime_nsec", "atime", "atime_nsec", "ctime", "ctime_nsec",
                         "create_time", "create_time_nsec")
            else:  # glfs_stat
                names = ("mask", "atime", "atime_nsec", "mtime", "mtime_nsec")
            args.update(zip(names, w))
    return args, faults


def tally(rec: EventRecord, clock: ClockMap) -> dict:
    """The fd's writes glfs acknowledged since the last successful fsync (fsync/close return)."""
    w = list(rec.words)
    out = {"count": w[0], "bytes": w[1]}
    if w[0]:
        out.update(first_time_ns=clock.to_realtime(w[2]), last_time_ns=clock.to_realtime(w[3]))
        if w[4] >= 0:
            out.update(offset_lo=w[4], offset_hi=w[5])
    if w[7] & FD_OPENED_UNSEEN:
        out["opened_before_probes"] = True
    return out


def convert_retval(ctype: str, raw: int):
    """rax holds the return value; an int function leaves the upper 32 bits undefined."""
    if ctype == "int":
        return ctypes.c_int32(raw & 0xFFFFFFFF).value
    if ctype == "ptr":
        return f"{raw & 0xFFFFFFFFFFFFFFFF:#x}"
    return raw


def record_to_event(rp: ResolvedProbe, rec: EventRecord, clock: ClockMap, source: str, host: str,
                    caller: ResolvedProbe | None = None) -> dict:
    """The event of one record of probe `rp`; a call `rp` saw coming from the wrapper
    `caller` (wrappers.py) is the wrapper's, with `via` naming where it was seen."""
    named = caller or rp
    function, _, version = named.function.partition("@")
    common = dict(function=function, library=named.path, probe=named.spec.name, pid=rec.pid,
                  tid=rec.tid, comm=_text(bytes(rec.comm)), host=host)
    if version:
        common["symbol_version"] = version
    if caller is not None:
        common["via"] = rp.function.partition("@")[0]
    time_ns = clock.to_realtime(rec.ts)
    if rec.kind == KIND_RETURN:
        ev = make_event(time_ns, "probe", "probe.return", source, **common,
                        retval=convert_retval(rp.spec.retval, rec.retval),
                        duration_ns=None if rec.flags & F_NO_ENTRY else rec.duration_ns)
        if rec.flags & F_ERRNO:
            ev["errno"] = rec.err
            ev["errno_name"] = errno_name(rec.err)
        if rec.flags & F_TALLY:
            ev["unsynced_writes"] = tally(rec, clock)
        return ev
    args, faults = decode_args(rp, rec)
    ev = make_event(time_ns, "probe", "probe.call", source, **common, args=args)
    if faults:
        ev["unreadable"] = faults
    return ev
