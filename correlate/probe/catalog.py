"""The probe catalog: which functions to probe and how to read their arguments, as data.

A ProbeSpec names a library, a function and the layout of the arguments worth reading.
Backends (bcc, SystemTap) turn the same specs into probe programs, so a plugin adds a probe
point by returning more ProbeSpecs; it never writes BPF C.

Argument kinds (the vocabulary the backends implement; `index` is the 1-based C argument):

  str            char *, read as a bounded string (MAX_STR bytes)      -> args[name]
  int            a signed 32-bit integer argument (C int)               -> args[name]
  long           a signed 64-bit integer argument (size_t, off_t)       -> args[name]
  ptr            a pointer value, shown as hex                          -> args[name]
  fd             a glfs_fd_t *, shown as hex; the path it was opened    -> args[name],
                 with, when the probes saw that open                       args["path"]
  timespec2      const struct timespec times[2] (utimensat order)       -> atime, atime_nsec,
                                                                           mtime, mtime_nsec
  smb_file_time  struct smb_file_time * {mtime, atime, ctime, create_time} -> those four, each
                                                                           with a *_nsec
  glfs_stat      struct glfs_stat * (gfapi 6.0+): mask at 0, atime at 0x18, mtime at 0x48
                 (offsets read from glfs_iatt_from_statx in libgfapi 10.3) -> mask, atime,
                                                                           atime_nsec, mtime, mtime_nsec
A spec reads at most one `str` or `fd`, four `int`/`long`/`ptr`/`fd` and one struct kind. A
`str` may be reached through pointers (`deref`), e.g. Samba's fsp->fsp_name->base_name.

Hot functions (every read and write of every file) use `emit="failures"`: the probe program
keeps the call's argument registers until the return and sends call and return only when the
call failed (int/long < 0, ptr NULL), with errno; strings and structs are read at the return,
through the pointers kept. `fd_role` lets the program follow glfs_fd_t pointers
in the kernel without sending anything: "opens" (the return is a new fd for the call's
path), "writes" (a successful return adds to the fd's acknowledged, not yet synced writes),
"syncs" and "closes" (the return carries that tally; a successful fsync clears it).
A function that is called often but matters only when it is slow uses `emit="slow"` with
`slow_ns`: the program keeps the call's registers (as for "failures"; the collector can
list the calls in progress) and sends call and return only when the call took at least `slow_ns`
or when it failed, so a failure is never hidden by a fast return (unless another probe on
the same function sends the failures: then only slow calls). Live, a call still
running after `slow_ns` is sent by the collector while it runs, its strings and structs
read from the process then (so detectors see it before the RPCs it causes); the return
then sends only itself.
Functions whose every call matters but whose success says nothing more (the time setters:
the call carries the times) use `emit="calls"`: the call is sent at its entry, the return
only when it failed. `implemented_by` names a function of the same library that does this
one's work (in gfapi 6+, glfs_utimens only calls glfs_setattr): where that function is
probed too and this one's code calls it, bcc traps only there and reports the calls made
from here under this name (correlate/probe/wrappers.py).
`function` may name a symbol version, "glfs_pread@GFAPI_3.4.0" (what older programs call);
a bare name is the default version.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_STR = 256
ARG_KINDS = ("str", "int", "long", "ptr", "fd", "timespec2", "smb_file_time", "glfs_stat")
STRUCT_KINDS = ("timespec2", "smb_file_time", "glfs_stat")
# What each struct kind reads: (byte offset, 8-byte words) runs, stored one after another in
# the record's words. The BPF readers are generated from this (bcc_program.py), and the
# collector reads a running slow call's struct with it (proc_memory.py).
STRUCT_WORDS = {
    "timespec2": ((0, 4),),             # times[2]: atime sec, nsec, mtime sec, nsec
    "smb_file_time": ((0, 8),),         # mtime, atime, ctime, create_time
    "glfs_stat": ((0, 1), (0x18, 2), (0x48, 2)),   # mask, atime, mtime
}
WORD_KINDS = ("int", "long", "ptr", "fd")       # one 8-byte slot each
EMITS = ("all", "calls", "failures", "slow")
FD_ROLES = ("", "opens", "writes", "syncs", "closes")
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


@dataclass(frozen=True)
class Arg:
    name: str
    index: int          # 1-based position of the C argument (1..6 on x86-64 registers)
    kind: str
    # For `str`: pointer hops before the string, p = *(p + off) for each. An entry may be a
    # layout name (see correlate/probe/layout.py) that is read from the probed binary's code;
    # when it cannot be, the argument is left out rather than guessed.
    deref: tuple[int | str, ...] = ()

    def __post_init__(self):
        if self.deref and self.kind != "str":
            raise ValueError(f"argument {self.name}: deref is only for str arguments")
        if len(self.deref) > 4:
            raise ValueError(f"argument {self.name}: at most 4 pointer hops")
        if self.kind not in ARG_KINDS:
            raise ValueError(f"argument {self.name}: unknown kind {self.kind!r} (one of {', '.join(ARG_KINDS)})")
        if not 1 <= self.index <= 6:
            raise ValueError(f"argument {self.name}: index {self.index} is not a register argument (1..6)")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe point. `library` is a soname (libgfapi.so.0), a path relative to the
    library directories (samba/vfs/glusterfs.so) or an absolute path."""
    name: str                   # unique, e.g. "gfapi.glfs_utimens"
    group: str                  # what --probe selects: gfapi | samba | a plugin's group
    library: str
    function: str
    args: tuple[Arg, ...] = ()
    retprobe: bool = False      # also attach a uretprobe: retval and duration_ns
    retval: str = "int"         # C return type: int (32-bit, sign-extended), long, ptr
    aliases: tuple[str, ...] = ()           # the same function's name in other versions
    calls: tuple[tuple[str, ...], ...] = ()  # stripped static function: imports it calls
    description: str = ""
    emit: str = "all"           # "calls": every call, its return only when it failed;
                                # "failures": call and return only when the call failed;
                                # "slow": only when it took >= slow_ns or failed
    slow_ns: int = 0            # emit="slow": the duration from which a call is sent
    fd_role: str = ""           # "", "opens", "writes", "syncs", "closes" (see the module doc)
    implemented_by: str = ""    # a function of the same library that does this one's work:
                                # seen there, when probed (correlate/probe/wrappers.py)

    def __post_init__(self):
        if self.retval not in ("int", "long", "ptr"):
            raise ValueError(f"{self.name}: retval must be int, long or ptr")
        kinds = [a.kind for a in self.args]
        if kinds.count("str") + kinds.count("fd") > 1 or sum(k in WORD_KINDS for k in kinds) > 4 \
                or sum(k in STRUCT_KINDS for k in kinds) > 1:
            raise ValueError(f"{self.name}: at most one str or fd, four int/long/ptr/fd and one "
                             "struct argument")
        if self.emit not in EMITS:
            raise ValueError(f"{self.name}: emit must be one of {', '.join(EMITS)}")
        if self.emit == "slow" and (type(self.slow_ns) is not int or self.slow_ns <= 0):
            raise ValueError(f"{self.name}: emit=\"slow\" needs slow_ns, an int > 0 (nanoseconds)")
        if self.emit != "slow" and self.slow_ns:
            raise ValueError(f"{self.name}: slow_ns is only for emit=\"slow\"")
        if not isinstance(self.implemented_by, str) or self.implemented_by in self.names:
            raise ValueError(f"{self.name}: implemented_by is the name of another function")
        if self.fd_role not in FD_ROLES:
            raise ValueError(f"{self.name}: fd_role must be one of {', '.join(map(repr, FD_ROLES))}")
        if (self.emit != "all" or self.fd_role) and not self.retprobe:
            raise ValueError(f"{self.name}: emit and fd_role work on the return: set retprobe")
        if self.fd_role == "opens" and (self.retval != "ptr" or "str" not in kinds):
            raise ValueError(f"{self.name}: an opening function returns a ptr and reads a path str")
        if self.fd_role in ("writes", "syncs", "closes") and "fd" not in kinds:
            raise ValueError(f"{self.name}: fd_role {self.fd_role} needs an fd argument")

    @property
    def names(self) -> tuple[str, ...]:
        return (self.function, *self.aliases)


GFAPI = "libgfapi.so.0"
SAMBA_GLUSTER = "samba/vfs/glusterfs.so"

BUILTIN: tuple[ProbeSpec, ...] = (
    # gfapi 6.0+ implements the time setters with glfs_setattr / glfs_fsetattr
    ProbeSpec("gfapi.glfs_utimens", "gfapi", GFAPI, "glfs_utimens",
              (Arg("path", 2, "str"), Arg("times", 3, "timespec2")), retprobe=True, emit="calls",
              implemented_by="glfs_setattr",
              description="glfs_utimens(fs, path, times[2]): set atime/mtime by path"),
    ProbeSpec("gfapi.glfs_lutimens", "gfapi", GFAPI, "glfs_lutimens",
              (Arg("path", 2, "str"), Arg("times", 3, "timespec2")), retprobe=True, emit="calls",
              implemented_by="glfs_setattr",
              description="glfs_lutimens(fs, path, times[2]): as utimens, not following links"),
    ProbeSpec("gfapi.glfs_futimens", "gfapi", GFAPI, "glfs_futimens",
              (Arg("fd", 1, "ptr"), Arg("times", 2, "timespec2")), retprobe=True, emit="calls",
              implemented_by="glfs_fsetattr",
              description="glfs_futimens(glfd, times[2]): set atime/mtime by open file"),
    ProbeSpec("gfapi.glfs_setattr", "gfapi", GFAPI, "glfs_setattr",
              (Arg("path", 2, "str"), Arg("stat", 3, "glfs_stat"), Arg("follow", 4, "int")),
              retprobe=True, emit="calls",
              description="glfs_setattr(fs, path, glfs_stat, follow) (gfapi 6.0+)"),
    ProbeSpec("gfapi.glfs_fsetattr", "gfapi", GFAPI, "glfs_fsetattr",
              (Arg("fd", 1, "ptr"), Arg("stat", 2, "glfs_stat")), retprobe=True, emit="calls",
              description="glfs_fsetattr(glfd, glfs_stat) (gfapi 6.0+)"),
    ProbeSpec("gfapi.glfs_init", "gfapi", GFAPI, "glfs_init", (Arg("fs", 1, "ptr"),),
              retprobe=True,
              description="glfs_init(fs): a call without a return is a mount that hangs"),
    ProbeSpec("samba.vfs_gluster_fntimes", "samba", SAMBA_GLUSTER, "vfs_gluster_fntimes",
              (Arg("fsp", 2, "ptr"), Arg("ft", 3, "smb_file_time"),
               # fsp->fsp_name->base_name; base_name is the first member of smb_filename
               Arg("path", 2, "str", deref=("files_struct.fsp_name", 0))), retprobe=True,
              aliases=("vfs_gluster_ntimes",),
              calls=(("glfs_futimens", "glfs_utimens"), ("glfs_utimens",)),
              description="Samba's vfs_glusterfs time setter (vfs_gluster_ntimes in older Samba): "
                          "struct smb_file_time is the third argument in both"),
)



def _fops() -> tuple[ProbeSpec, ...]:
    """The calls whose return values the stale-handle, split-brain and lost-write findings
    need. Every file's open, read, write and close pass here, so each reports only failures
    (and keeps per-fd state in the kernel). glfs_pread, glfs_pwrite and glfs_fsync gained
    pre/post stat arguments in GFAPI_6.0; programs built before still call the 3.4.0 symbols,
    probed as well (the leading arguments are the same)."""
    def spec(function, args, retval="int", fd_role="", doc="", version=""):
        symbol = f"{function}@{version}" if version else function
        return ProbeSpec(f"gfapi.{symbol}", "gfapi", GFAPI, symbol, args, retprobe=True,
                         retval=retval, emit="failures", fd_role=fd_role,
                         description=doc + (f" (the {version} symbol)" if version else "")
                         + "; reported when it fails")
    fd = Arg("fd", 1, "fd")
    count = Arg("count", 3, "long")
    offset = Arg("offset", 4, "long")
    out = [
        spec("glfs_open", (Arg("path", 2, "str"), Arg("flags", 3, "int")), "ptr", "opens",
             "glfs_open(fs, path, flags) -> glfs_fd_t *"),
        spec("glfs_creat", (Arg("path", 2, "str"), Arg("flags", 3, "int"), Arg("mode", 4, "int")),
             "ptr", "opens", "glfs_creat(fs, path, flags, mode) -> glfs_fd_t *"),
        spec("glfs_read", (fd, count), "long", "", "glfs_read(glfd, buf, count, flags)"),
        spec("glfs_write", (fd, count), "long", "writes", "glfs_write(glfd, buf, count, flags)"),
        spec("glfs_close", (fd,), "int", "closes", "glfs_close(glfd)"),
        spec("glfs_stat", (Arg("path", 2, "str"),), "int", "", "glfs_stat(fs, path, buf)"),
        spec("glfs_fstat", (fd,), "int", "", "glfs_fstat(glfd, buf)"),
        spec("glfs_posix_lock", (fd, Arg("cmd", 2, "int")), "int", "",
             "glfs_posix_lock(glfd, cmd, flock)"),
    ]
    for version in ("", "GFAPI_3.4.0"):
        out += [
            spec("glfs_pread", (fd, count, offset), "long", "",
                 "glfs_pread(glfd, buf, count, offset, flags, poststat)", version),
            spec("glfs_pwrite", (fd, count, offset), "long", "writes",
                 "glfs_pwrite(glfd, buf, count, offset, flags, prestat, poststat)", version),
            spec("glfs_fsync", (fd,), "int", "syncs", "glfs_fsync(glfd, prestat, poststat)",
                 version),
        ]
    return tuple(out)


BUILTIN = BUILTIN + _fops()
GROUPS = ("gfapi", "samba", "all")


def select(group: str, extra: list[ProbeSpec] | tuple[ProbeSpec, ...] = ()) -> list[ProbeSpec]:
    """The specs `--probe GROUP` means; `extra` are specs plugins contributed."""
    specs = [*BUILTIN, *extra]
    names = set()
    for spec in specs:
        if spec.name in names:
            raise ValueError(f"probe {spec.name} is defined twice")
        names.add(spec.name)
    if group == "all":
        return specs
    chosen = [s for s in specs if s.group == group or s.name == group]
    if not chosen:
        known = sorted({s.group for s in specs} | {"all"})
        raise ValueError(f"no probe group {group!r} (known: {', '.join(known)})")
    return chosen
