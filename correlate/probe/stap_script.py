"""The SystemTap script for a list of resolved probes, and the events its lines become.

Where the library has DWARF debug info the script reads arguments the DWARF way
(`$times[0]->tv_sec`, `user_string_n($path, 255)`, `$return`); the argument names of a
ProbeSpec are then the C parameter names. Without DWARF it uses the plain
`process("lib").function("f")` form and prints what it can: time, pid, tid, process name.
Probes found only by address (eh_frame+plt or --probe-offset) cannot be named to stap and are
left out, with the reason in `skipped`. Running stap is stap_backend.py's job.
"""
from __future__ import annotations

import re
from importlib import resources

from ..events import make_event
from .catalog import MAX_STR
from .elf_functions import debug_files
from .elfsym import ElfError, load_elf
from .proc_memory import thread_name
from .resolve import ResolvedProbe

COMM_RE = re.compile(r"^CORR\tcomm\t(\d+)\t(.*)$")
LINE_RE = re.compile(r"^CORR\t(call|return)\t(\d+)\t(-?\d+)\t(\d+)\t(\d+)\t?(.*)$")


def has_dwarf(path: str) -> bool:
    """True when stap can read arguments: .debug_info in the file or in its debug file."""
    try:
        elf = load_elf(path)
        if elf.section(".debug_info"):
            return True
        for dbg in debug_files(elf):
            if load_elf(dbg).section(".debug_info"):
                return True
    except ElfError:
        pass
    return False


def _stap_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dwarf_reads(rp: ResolvedProbe) -> tuple[list[str], list[str]]:
    """printf formats and expressions for the spec's arguments, DWARF style."""
    fmts, exprs = [], []
    for arg in rp.arguments:
        v = "$" + arg.name
        if arg.deref:
            continue    # pointer hops by offset are a bcc feature; DWARF names the members
        if arg.kind == "str":
            fmts.append(f"{arg.name}=%s")
            exprs.append(f"user_string_n({v}, {MAX_STR - 1})")
        elif arg.kind in ("int", "long", "ptr", "fd"):   # pointers print as numbers, shown as hex later
            fmts.append(f"{arg.name}=%ld")
            exprs.append(v)
        elif arg.kind == "timespec2":
            for name, expr in (("atime", f"{v}[0]->tv_sec"), ("atime_nsec", f"{v}[0]->tv_nsec"),
                               ("mtime", f"{v}[1]->tv_sec"), ("mtime_nsec", f"{v}[1]->tv_nsec")):
                fmts.append(f"{name}=%ld")
                exprs.append(expr)
        elif arg.kind == "smb_file_time":
            for field in ("mtime", "atime", "ctime", "create_time"):
                fmts += [f"{field}=%ld", f"{field}_nsec=%ld"]
                exprs += [f"{v}->{field}->tv_sec", f"{v}->{field}->tv_nsec"]
        elif arg.kind == "glfs_stat":
            fmts += ["mask=%ld", "atime=%ld", "atime_nsec=%ld", "mtime=%ld", "mtime_nsec=%ld"]
            exprs += [f"{v}->glfs_st_mask", f"{v}->glfs_st_atime->tv_sec",
                      f"{v}->glfs_st_atime->tv_nsec", f"{v}->glfs_st_mtime->tv_sec",
                      f"{v}->glfs_st_mtime->tv_nsec"]
    return fmts, exprs


def _stap_failed(retval: str) -> str:
    """stap test of $return for a failed call (as bcc_program._failed)."""
    return {"int": "($return & 0xffffffff) >= 0x80000000", "long": "$return < 0",
            "ptr": "$return == 0"}[retval]


def script_text(probes: list[ResolvedProbe], dwarf: dict[str, bool] | None = None,
                filter_pid: bool = False, returns: bool = True) -> tuple[str, list[tuple[ResolvedProbe, str]]]:
    """The stap script for `probes` and the probes left out (with why).

    `dwarf` maps library path -> has DWARF (computed when not given). With `filter_pid` each
    probe returns early unless pid() is stap's target() (`stap -x PID`)."""
    guard = "  if (pid() != target()) next\n" if filter_pid else ""
    header = resources.files("correlate.probes").joinpath("stap_header.stp").read_text()
    dwarf = dict(dwarf or {})
    parts, skipped = [header], []
    for i, rp in enumerate(probes):
        if rp.method in ("eh_frame+plt", "offset"):
            skipped.append((rp, f"{rp.function} is located by address ({rp.method}); stap needs a name"))
            continue
        if rp.spec.emit == "slow":
            skipped.append((rp, f"{rp.function} reports only calls that took "
                                f"{rp.spec.slow_ns / 1e6:g} ms or more or failed, decided in the "
                                "bcc program at the return; stap here has no returns and would "
                                "report every call"))
            continue
        if rp.spec.emit not in ("all", "calls") or rp.spec.fd_role:
            skipped.append((rp, f"{rp.function} reports failed calls only, decided in the bcc "
                                "program on the return value; stap would report every call"))
            continue
        if rp.path not in dwarf:
            dwarf[rp.path] = has_dwarf(rp.path)
        point = f"process({_stap_string(rp.path)}).function({_stap_string(rp.function)})"
        # %ld: stapbpf's %d prints only 32 bits
        common = "CORR\\t{kind}\\t" + str(i) + "\\t%ld\\t%d\\t%d"
        fixed = "gettimeofday_ns(), pid(), tid()"
        if dwarf[rp.path]:
            fmts, exprs = _dwarf_reads(rp)
        else:
            fmts, exprs = [], []
        # stapbpf keeps strings and formats on the 512-byte BPF stack, and a second printf
        # in the same handler overflows it; the process name therefore comes from a handler of
        # its own on the same point (printed first), keyed by thread in the parser.
        if any(f.endswith("=%s") for f in fmts):
            fmt = "\\t".join([common.format(kind="call"), *fmts]) + "\\n"
            args = ", ".join([fixed, *exprs])
            parts.append(f"probe {point} {{\n{guard}  printf(\"CORR\\tcomm\\t%d\\t%s\\n\", tid(), execname())\n}}")
        else:
            fmt = "\\t".join([common.format(kind="call"), *fmts, "comm=%s"]) + "\\n"
            args = ", ".join([fixed, *exprs, "execname()"])
        body = f"{guard}  printf(\"{fmt}\", {args})\n"
        parts.append(f"// {rp.spec.name}{'' if dwarf[rp.path] else ' (no DWARF: arguments not readable)'}\n"
                     f"probe {point} {{\n{body}}}\n")
        guard_ret = guard
        # emit="calls": a return only when it failed, which needs $return (DWARF)
        if rp.spec.retprobe and returns and (rp.spec.emit == "all" or dwarf[rp.path]):
            if dwarf[rp.path]:
                rfmt = "\\t".join([common.format(kind="return"), "retval=%ld", "comm=%s"]) + "\\n"
                rargs = f"{fixed}, $return, execname()"
                if rp.spec.emit == "calls":
                    guard_ret = guard + f"  if (!({_stap_failed(rp.spec.retval)})) next\n"
            else:
                rfmt = "\\t".join([common.format(kind="return"), "comm=%s"]) + "\\n"
                rargs = f"{fixed}, execname()"
            parts.append(f"probe {point}.return {{\n{guard_ret}  printf(\"{rfmt}\", {rargs})\n}}\n")
    return "\n".join(parts), skipped


def parse_line(line: str, probes: list[ResolvedProbe], source: str, host: str,
               entries: dict) -> dict | None:
    """One stap output line -> an event (None for lines that are not ours or are damaged).

    `entries` maps (pid, tid, probe#) -> call time, to give returns their duration, and
    ("comm", tid) -> the process name its comm line gave."""
    m = COMM_RE.match(line.rstrip("\n"))
    if m:   # the process name, printed by its own handler just before the call line
        entries[("comm", int(m.group(1)))] = m.group(2)
        return None
    m = LINE_RE.match(line.rstrip("\n"))
    if not m:
        return None
    kind, idx, t, pid, tid, rest = m.groups()
    idx, t, pid, tid = int(idx), int(t), int(pid), int(tid)
    if idx >= len(probes):
        return None
    rp = probes[idx]
    fields: dict[str, str] = {}
    comm = entries.get(("comm", tid)) or thread_name(pid, tid)
    for item in rest.split("\t") if rest else []:
        key, sep, value = item.partition("=")
        if not sep:
            continue
        if key == "comm":
            comm = value
        else:
            fields[key] = value
    common = dict(function=rp.function, library=rp.path, probe=rp.spec.name, pid=pid, tid=tid,
                  comm=comm, host=host)
    if kind == "return":
        start = entries.pop((pid, tid, idx), None)
        ev = make_event(t, "probe", "probe.return", source, **common,
                        duration_ns=None if start is None else t - start)
        if "retval" in fields:
            ev["retval"] = _int(fields["retval"])
        return ev
    if rp.spec.retprobe:
        entries[(pid, tid, idx)] = t
    args = {}
    kinds = {a.name: a.kind for a in rp.spec.args}
    for key, value in fields.items():
        if kinds.get(key) == "str":
            args[key] = value
        elif kinds.get(key) == "ptr":
            n = _int(value)
            args[key] = f"{n & 0xFFFFFFFFFFFFFFFF:#x}" if isinstance(n, int) else value
        else:
            args[key] = _int(value)
    return make_event(t, "probe", "probe.call", source, **common, args=args)


def _int(value: str):
    try:
        return int(value, 0)
    except ValueError:
        return value
