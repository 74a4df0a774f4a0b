"""The probe catalog: which functions to probe and how to read their arguments, as data.

A ProbeSpec names a library, a function and the layout of the arguments worth reading.
Backends (bcc, SystemTap) turn the same specs into probe programs, so a plugin adds a probe
point by returning more ProbeSpecs; it never writes BPF C.

Argument kinds (the vocabulary the backends implement; `index` is the 1-based C argument):

  str            char *, read as a bounded string (MAX_STR bytes)      -> args[name]
  int            a signed integer argument                              -> args[name]
  ptr            a pointer value, shown as hex (e.g. a glfs_fd_t *)     -> args[name]
  timespec2      const struct timespec times[2] (utimensat order)       -> atime, atime_nsec,
                                                                           mtime, mtime_nsec
  smb_file_time  struct smb_file_time * {mtime, atime, ctime, create_time} -> those four, each
                                                                           with a *_nsec
  glfs_stat      struct glfs_stat * (gfapi 6.0+): mask at 0, atime at 0x18, mtime at 0x48
                 (offsets read from glfs_iatt_from_statx in libgfapi 10.3) -> mask, atime,
                                                                           atime_nsec, mtime, mtime_nsec
A spec reads at most one `str`, two `int`/`ptr` and one struct kind. A `str` may be reached
through pointers (`deref`), e.g. Samba's fsp->fsp_name->base_name.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_STR = 256
ARG_KINDS = ("str", "int", "ptr", "timespec2", "smb_file_time", "glfs_stat")
STRUCT_KINDS = ("timespec2", "smb_file_time", "glfs_stat")
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

    def __post_init__(self):
        if self.retval not in ("int", "long", "ptr"):
            raise ValueError(f"{self.name}: retval must be int, long or ptr")
        kinds = [a.kind for a in self.args]
        if kinds.count("str") > 1 or sum(k in ("int", "ptr") for k in kinds) > 2 \
                or sum(k in STRUCT_KINDS for k in kinds) > 1:
            raise ValueError(f"{self.name}: at most one str, two int/ptr and one struct argument")

    @property
    def names(self) -> tuple[str, ...]:
        return (self.function, *self.aliases)


GFAPI = "libgfapi.so.0"
SAMBA_GLUSTER = "samba/vfs/glusterfs.so"

BUILTIN: tuple[ProbeSpec, ...] = (
    ProbeSpec("gfapi.glfs_utimens", "gfapi", GFAPI, "glfs_utimens",
              (Arg("path", 2, "str"), Arg("times", 3, "timespec2")), retprobe=True,
              description="glfs_utimens(fs, path, times[2]): set atime/mtime by path"),
    ProbeSpec("gfapi.glfs_lutimens", "gfapi", GFAPI, "glfs_lutimens",
              (Arg("path", 2, "str"), Arg("times", 3, "timespec2")), retprobe=True,
              description="glfs_lutimens(fs, path, times[2]): as utimens, not following links"),
    ProbeSpec("gfapi.glfs_futimens", "gfapi", GFAPI, "glfs_futimens",
              (Arg("fd", 1, "ptr"), Arg("times", 2, "timespec2")), retprobe=True,
              description="glfs_futimens(glfd, times[2]): set atime/mtime by open file"),
    ProbeSpec("gfapi.glfs_setattr", "gfapi", GFAPI, "glfs_setattr",
              (Arg("path", 2, "str"), Arg("stat", 3, "glfs_stat"), Arg("follow", 4, "int")),
              retprobe=True, description="glfs_setattr(fs, path, glfs_stat, follow) (gfapi 6.0+)"),
    ProbeSpec("gfapi.glfs_fsetattr", "gfapi", GFAPI, "glfs_fsetattr",
              (Arg("fd", 1, "ptr"), Arg("stat", 2, "glfs_stat")), retprobe=True,
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
