"""Turn ProbeSpecs into attachable probe points: library file + function address + method."""
from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from dataclasses import replace

from .catalog import Arg, ProbeSpec
from .elf_functions import Resolution, SymbolNotFound, resolve_in_file
from .elfsym import ElfError, load_elf
from .layout import resolve_offsets
from .errors import LibraryNotFound, ProbeError, SymbolNotResolvable

LIB_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
            "/lib", "/usr/lib", "/usr/local/lib")


@dataclass(frozen=True)
class ResolvedProbe:
    spec: ProbeSpec
    path: str            # the library file the probe attaches to
    function: str        # the name that matched (may be an alias)
    address: int         # ELF virtual address, what bcc's attach_uprobe(addr=) takes
    file_offset: int
    method: str          # dynsym | symtab | debuginfo | eh_frame+plt | offset
    detail: str = ""
    args: tuple[Arg, ...] | None = None   # the spec's arguments, layout names replaced by offsets
    notes: tuple[str, ...] = ()           # arguments left out, and why

    @property
    def arguments(self) -> tuple[Arg, ...]:
        """What the backends read: the fixed-up args, or the spec's own without layout names."""
        if self.args is not None:
            return self.args
        return tuple(a for a in self.spec.args if not any(isinstance(d, str) for d in a.deref))


def _ldconfig_paths(soname: str) -> list[str]:
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    paths = []
    for line in out.splitlines():
        name, _, rest = line.strip().partition(" ")
        if name == soname and "=>" in rest:
            paths.append(rest.split("=>", 1)[1].strip())
    return paths


def _mapped_paths(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return sorted({line.split(None, 5)[5].strip() for line in fh
                           if len(line.split(None, 5)) == 6 and "/" in line})
    except OSError:
        return []


def find_library(library: str, pid: int | None = None) -> str:
    """The file `library` names; with a pid, the copy that process has mapped."""
    if pid is not None:
        for path in _mapped_paths(pid):
            if path.endswith("/" + library) \
                    or ("/" not in library and os.path.basename(path) == library) \
                    or (library.startswith("/") and os.path.realpath(path) == os.path.realpath(library)):
                return path
        # Not mapped (yet): fall back to the file on disk; a pid-filtered uprobe on it still
        # fires once that process loads it (smbd loads vfs modules at tree connect).
    looked = []
    if os.path.isabs(library):
        if os.path.isfile(library):
            return library
        looked.append(library)
    else:
        if "/" not in library:
            for path in _ldconfig_paths(library):
                if os.path.isfile(path):
                    return path
            looked.append("ldconfig -p")
        for d in LIB_DIRS:
            path = os.path.join(d, library)
            if os.path.isfile(path):
                return path
        looked += list(LIB_DIRS)
    if pid is not None:
        looked.insert(0, f"/proc/{pid}/maps")
    raise LibraryNotFound(library, looked)


def parse_offsets(items: list[str] | tuple[str, ...]) -> dict[str, int]:
    """--probe-offset FUNC=0xOFF (repeatable) -> {FUNC: address}."""
    out = {}
    for item in items:
        m = re.fullmatch(r"\s*([A-Za-z_][\w.]*)\s*=\s*(0[xX][0-9a-fA-F]+|\d+)\s*", item)
        if not m:
            raise ProbeError(f"--probe-offset {item!r}: expected FUNC=0xADDRESS (for example "
                             "vfs_gluster_fntimes=0x80e0)")
        out[m.group(1)] = int(m.group(2), 0)
    return out


def resolve(spec: ProbeSpec, pid: int | None = None, offsets: dict[str, int] | None = None) -> ResolvedProbe:
    """Locate the function, then fix up argument layouts that depend on the binary."""
    return with_layouts(_locate(spec, pid, offsets))


def with_layouts(rp: ResolvedProbe) -> ResolvedProbe:
    names = {d for a in rp.spec.args for d in a.deref if isinstance(d, str)}
    found: dict[str, int | None] = {}
    if names:
        try:
            found = resolve_offsets(load_elf(rp.path), rp.address, names)
        except ElfError:
            found = {n: None for n in names}
    args, notes = [], []
    for arg in rp.spec.args:
        missing = [d for d in arg.deref if isinstance(d, str) and found.get(d) is None]
        if missing:
            notes.append(f"{arg.name} left out: {', '.join(missing)} not found in the code of "
                         f"{rp.function}")
            continue
        args.append(replace(arg, deref=tuple(found[d] if isinstance(d, str) else d for d in arg.deref)))
    return replace(rp, args=tuple(args), notes=tuple(notes))


def _locate(spec: ProbeSpec, pid: int | None, offsets: dict[str, int] | None) -> ResolvedProbe:
    path = find_library(spec.library, pid)
    offsets = offsets or {}
    for name in (spec.name, *spec.names):
        if name in offsets:
            addr = offsets[name]
            try:
                off = load_elf(path).vaddr_to_offset(addr)
            except ElfError:
                off = None
            return ResolvedProbe(spec, path, spec.function, addr, addr if off is None else off,
                                 "offset", "from --probe-offset")
    problems = []
    # Names first (every method), the call-pattern search only once no name matched.
    for name in spec.names:
        try:
            res = resolve_in_file(path, name)
            return _from(spec, res)
        except SymbolNotFound as exc:
            problems.append(str(exc))
        except ElfError as exc:
            raise SymbolNotResolvable(spec.function, str(exc)) from None
    if spec.calls:
        try:
            return _from(spec, resolve_in_file(path, spec.function, spec.calls))
        except SymbolNotFound as exc:
            problems = [str(exc)]
    raise SymbolNotResolvable(spec.function, "; ".join(problems))


def _from(spec: ProbeSpec, res: Resolution) -> ResolvedProbe:
    return ResolvedProbe(spec, res.path, res.function, res.address, res.file_offset, res.method, res.detail)
