"""The application's system calls for the `fuse` group (probes/fuse_syscalls.c): which calls
the kernel keeps, where their path or fd argument is, the processes watched from the start,
and the `fuse.syscall` event a record becomes.

System call numbers are the running architecture's, from bcc's table (bcc.syscall, which
asks `ausyscall` off x86_64); a call missing from it is simply not kept.
"""
from __future__ import annotations

import ctypes
import os

from ..events import make_event
from ..gluster.errnos import errno_name

PATH_LEN = 256
NR_UNKNOWN = 0xFFFFFFFF
SYS_TRACKED, SYS_FD0 = 0x80, 0x10
MAX_NR = 512
AT_FDCWD = -100
MODES = ("send", "exit", "0")     # CORRELATE_FUSE_SYSCALLS
MAX_SEED = 4096              # processes watched from the start, at most
# pt_regs members the program reads (x86_64 names: the syscall ABI's first two arguments
# and the number); other architectures get the group without system calls
REGS = (("REGS_ARG0", "di"), ("REGS_ARG1", "si"), ("REGS_NR", "orig_ax"))

# the calls kept: name -> index of the path argument (None: none), whether argument 0 is an fd
PATH0 = ("open", "creat", "stat", "lstat", "access", "truncate", "mkdir", "rmdir", "unlink",
         "rename", "link", "chmod", "chown", "lchown", "utime", "utimes", "readlink", "chdir",
         "statfs", "getxattr", "lgetxattr", "setxattr", "lsetxattr", "listxattr",
         "llistxattr", "removexattr", "lremovexattr", "mknod", "execve")
PATH1 = ("openat", "openat2", "newfstatat", "statx", "mkdirat", "unlinkat", "renameat",
         "renameat2", "linkat", "fchmodat", "fchmodat2", "fchownat", "faccessat", "faccessat2",
         "utimensat", "readlinkat", "mknodat", "symlink", "symlinkat", "futimesat", "execveat")
FD0 = ("read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev",
       "preadv2", "pwritev2", "close", "fsync", "fdatasync", "fstat", "fstatfs", "getdents",
       "getdents64", "ftruncate", "fallocate", "lseek", "fcntl", "flock", "fchmod", "fchown",
       "fgetxattr", "fsetxattr", "flistxattr", "fremovexattr", "copy_file_range", "sendfile",
       "splice", "sync_file_range", "syncfs", "fchdir", "fadvise64", "mmap")


class SysEvent(ctypes.Structure):
    """Mirror of struct sys_event_t in probes/fuse_syscalls.c."""
    _fields_ = [("ts_enter", ctypes.c_uint64), ("ts_exit", ctypes.c_uint64),
                ("ret", ctypes.c_int64), ("unique", ctypes.c_uint64), ("fd", ctypes.c_uint64),
                ("nr", ctypes.c_uint32), ("partial", ctypes.c_uint32), ("tgid", ctypes.c_uint32),
                ("tid", ctypes.c_uint32), ("fused", ctypes.c_uint32), ("opcode", ctypes.c_uint32),
                ("dev", ctypes.c_uint32), ("fuse_error", ctypes.c_int32),
                ("has_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("comm", ctypes.c_char * 16), ("path", ctypes.c_char * PATH_LEN)]


def syscall_table() -> dict[int, str]:
    """Number -> name for this architecture (empty when bcc has no table for it)."""
    try:
        from bcc import syscall
    except Exception:    # no bcc, or its table needs ausyscall and there is none
        return {}
    return {int(nr): name.decode("ascii", "replace") for nr, name in syscall.syscalls.items()}


def sysinfo_flags(table: dict[int, str]) -> dict[int, int]:
    """The `sysinfo` map's contents: number -> SYS_TRACKED | SYS_FD0 | (1 + path index)."""
    out = {}
    for nr, name in table.items():
        if not 0 <= nr < MAX_NR:
            continue
        if name in PATH0:
            out[nr] = SYS_TRACKED | 1
        elif name in PATH1:
            out[nr] = SYS_TRACKED | 2
        elif name in FD0:
            out[nr] = SYS_TRACKED | SYS_FD0
    return out


def processes_using(mounts, proc: str = "/proc", limit: int = MAX_SEED) -> list[int]:
    """Processes with a file, directory or working directory on one of `mounts` now."""
    prefixes = tuple(m.rstrip("/") + "/" for m in mounts)
    roots = {m.rstrip("/") or "/" for m in mounts}
    found = []
    try:
        pids = [int(p) for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if len(found) >= limit:
            break
        if pid == os.getpid():
            continue
        links = [f"{proc}/{pid}/cwd"]
        try:
            links += [f"{proc}/{pid}/fd/{fd}" for fd in os.listdir(f"{proc}/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target in roots or target.startswith(prefixes):
                found.append(pid)
                break
    return found


def fd_path(pid: int, fd: int | str) -> str | None:
    """What an fd (or "cwd") names while the process keeps it open (a closed fd: None)."""
    try:
        return os.readlink(f"/proc/{pid}/cwd" if fd == "cwd" else f"/proc/{pid}/fd/{fd}")
    except (OSError, ValueError):
        return None


def event_of(rec: SysEvent, names: dict[int, str], opcodes: dict[int, str], clock, source: str,
             host: str, mounts: dict[int, str]) -> dict:
    """The `fuse.syscall` event for a record."""
    name = names.get(int(rec.nr), f"syscall {int(rec.nr)}")
    fields = dict(syscall=name, syscall_nr=int(rec.nr), ret=int(rec.ret), pid=int(rec.tgid),
                  tid=int(rec.tid), comm=rec.comm.decode("utf-8", "replace"),
                  fuse_requests=int(rec.fused), host=host)
    if rec.unique:
        fields.update(unique=int(rec.unique), connection=int(rec.dev),
                      opcode=opcodes.get(rec.opcode, f"OP{rec.opcode}"))
        if rec.dev in mounts:
            fields["mount"] = mounts[rec.dev]
    if rec.fuse_error < 0:
        fields["fuse_errno_name"] = errno_name(-int(rec.fuse_error))
    if -4096 < rec.ret < 0:
        fields.update(errno=-int(rec.ret), errno_name=errno_name(-int(rec.ret)))
    path = bytes(rec.path).split(b"\0", 1)[0].decode("utf-8", "replace")
    if rec.has_fd:
        fd = ctypes.c_int32(rec.fd & 0xFFFFFFFF).value
        fields["fd"] = fd
        path = path or fd_path(int(rec.tgid), fd) or ""
    elif path and not path.startswith("/") and not rec.partial:
        # relative to the working directory, or to an *at call's directory fd
        dirfd = ctypes.c_int32(rec.fd & 0xFFFFFFFF).value
        base = fd_path(int(rec.tgid), "cwd" if name in PATH0 or dirfd == AT_FDCWD else dirfd)
        if base:
            path = base.rstrip("/") + "/" + path
    if path:
        fields["path"] = path
    if not rec.partial:
        fields.update(call_time_ns=clock.to_realtime(rec.ts_enter),
                      latency_ns=int(rec.ts_exit - rec.ts_enter))
    return make_event(clock.to_realtime(rec.ts_exit), "probe", "fuse.syscall", source, **fields)
