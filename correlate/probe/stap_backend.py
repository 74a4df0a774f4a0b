"""The SystemTap fallback: generate a script from the catalog, run `stap`, parse its lines.

Where the library has DWARF debug info the script reads arguments the DWARF way
(`$times[0]->tv_sec`, `user_string_n($path, 255)`, `$return`); the argument names of a
ProbeSpec are then the C parameter names. Without DWARF it uses the plain
`process("lib").function("f")` form and prints what it can: time, pid, tid, process name.
Probes found only by address (eh_frame+plt or --probe-offset) cannot be named to stap and are
left out, with the reason in `skipped`.

With `--runtime=bpf` (the default here) two things this kind of host lacks are worked around
without changing the host: tracefs, which stapbpf creates its uprobes through, is mounted in
a private mount namespace (`unshare --mount`), and when RLIMIT_MEMLOCK may not be raised
(no CAP_SYS_RESOURCE) probes/memlock_shim.c is built and preloaded so stapbpf's request for an
unlimited limit does not abort it. Both are listed in `adaptations`.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from importlib import resources

from ..events import make_event
from .catalog import MAX_STR
from .elfsym import ElfError, debug_files, load_elf
from .errors import NotRoot, ProbeError
from .resolve import ResolvedProbe

UPROBE_EVENTS = ("/sys/kernel/debug/tracing/uprobe_events", "/sys/kernel/tracing/uprobe_events")
START_TIMEOUT_S = 180.0       # stap compiles (passes 1-4) before it prints "ready"
COMM_RE = re.compile(r"^CORR\tcomm\t(\d+)\t(.*)$")
LINE_RE = re.compile(r"^CORR\t(call|return)\t(\d+)\t(-?\d+)\t(\d+)\t(\d+)\t?(.*)$")


def memlock_raise_refused() -> bool:
    """stapbpf insists on an unlimited RLIMIT_MEMLOCK; True when this process may not set it."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if hard == resource.RLIM_INFINITY:
        return False
    try:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        return True
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))  # it could; leave it as it was
    return False


def memlock_shim() -> str | None:
    """Build (once, with gcc) probes/memlock_shim.c when stapbpf's raise would be refused."""
    if not memlock_raise_refused() or shutil.which("gcc") is None:
        return None
    src = resources.files("correlate.probes").joinpath("memlock_shim.c").read_text()
    cache = os.path.join(tempfile.gettempdir(), f"correlate-memlock-shim-{os.geteuid()}")
    os.makedirs(cache, mode=0o700, exist_ok=True)
    lib = os.path.join(cache, "memlock_shim.so")
    c_file = os.path.join(cache, "memlock_shim.c")
    if not os.path.exists(lib) or not os.path.exists(c_file) or open(c_file).read() != src:
        with open(c_file, "w") as fh:
            fh.write(src)
        done = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", lib, c_file, "-ldl"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return None
    return lib


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
    comm = entries.get(("comm", tid)) or _proc_comm(pid, tid)
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


def _proc_comm(pid: int, tid: int) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _int(value: str):
    try:
        return int(value, 0)
    except ValueError:
        return value


class StapCollector:
    name = "stap"

    def __init__(self, probes: list[ResolvedProbe], pid: int | None = None, source: str = "stap",
                 runtime: str | None = None):
        self.all_probes = probes
        self.pid = pid
        self.source = source
        self.runtime = runtime or os.environ.get("CORRELATE_STAP_RUNTIME", "bpf")
        self.host = socket.gethostname()
        self.lost = 0
        self.skipped: list[tuple[ResolvedProbe, str]] = []
        self.clock = None
        self.proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        self._entries: dict = {}
        self._tmpdir: str | None = None
        self.damaged_lines = 0
        self.adaptations: list[str] = []
        self.attached = 0

    def command(self, script_path: str) -> tuple[list[str], dict]:
        """The stap command line and environment, adapted to what this host lacks."""
        cmd = [shutil.which("stap") or "stap"]
        env = dict(os.environ)
        self.adaptations = []
        if self.runtime and self.runtime != "kernel":
            cmd.append(f"--runtime={self.runtime}")
        if self.pid is not None:
            cmd += ["-x", str(self.pid)]
        cmd.append(script_path)
        if self.runtime == "bpf":
            shim = memlock_shim()
            if shim:
                env["LD_PRELOAD"] = shim + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
                self.adaptations.append("RLIMIT_MEMLOCK cannot be raised: preloading " + shim)
            if not any(os.path.exists(p) for p in UPROBE_EVENTS) and shutil.which("unshare"):
                # stapbpf creates uprobes through tracefs; mount it in a private mount
                # namespace so the host's mounts stay as they are.
                cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       "mount -t debugfs nodev /sys/kernel/debug 2>/dev/null; "
                       "mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; exec \"$@\"",
                       "stap", *cmd]
                self.adaptations.append("tracefs not mounted: running stap in a private mount "
                                        "namespace with tracefs mounted")
        return cmd, env

    def start(self) -> None:
        if shutil.which("stap") is None:
            raise ProbeError("stap not found: apt-get install systemtap")
        if os.geteuid() != 0:
            raise NotRoot()
        try:
            self._run(returns=True)
        except ProbeError as exc:
            # Kernels without uretprobe support in stap's view: keep the entry probes.
            if "return probes not available" not in str(exc):
                raise
            self._run(returns=False)
            left_out = {id(rp) for rp, _ in self.skipped}
            self.skipped += [(rp, "return not probed: stap says process return probes are not "
                                  "available on this kernel")
                             for rp in self.all_probes if rp.spec.retprobe and id(rp) not in left_out]

    def _run(self, returns: bool) -> None:
        text, self.skipped = script_text(self.all_probes, filter_pid=self.pid is not None,
                                         returns=returns)
        self.attached = len(self.all_probes) - sum(1 for _, why in self.skipped
                                                   if "stap needs a name" in why or "failed calls only" in why)
        if len(self.skipped) == len(self.all_probes):
            raise ProbeError("stap: no probe can be named to stap (" +
                             "; ".join(why for _, why in self.skipped) + ")")
        self._tmpdir = self._tmpdir or tempfile.mkdtemp(prefix="correlate-stap-")
        script = os.path.join(self._tmpdir, "correlate.stp")
        with open(script, "w") as fh:
            fh.write(text)
        self._lines, self._stderr = queue.Queue(), []
        cmd, env = self.command(script)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env,
                                     stderr=subprocess.PIPE, text=True, errors="backslashreplace",
                                     start_new_session=True)
        threading.Thread(target=self._pump, args=(self.proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._pump_err, args=(self.proc, self._stderr), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    time.sleep(0.2)   # let the stderr reader finish
                    reason = self.failure_reason()
                    self.proc = None
                    raise ProbeError(f"stap failed: {reason}")
                continue
            if line is not None and "CORR\tready" in line:
                return
        self.stop()
        raise ProbeError(f"stap did not start within {START_TIMEOUT_S:.0f} s")

    def failure_reason(self) -> str:
        """The line of stap's output that says why it failed (stap prints several)."""
        lines = [l.strip() for l in self._stderr if l.strip()]
        for l in lines:
            if l.startswith(("Error", "ERROR")) or "Operation not permitted" in l \
                    or "not available" in l:
                return l
        for l in lines:
            if l.startswith("semantic error"):
                return l
        for l in lines:
            if "failed" in l:
                return l
        return lines[-1] if lines else f"exit status {self.proc.returncode if self.proc else '?'}"

    @staticmethod
    def _pump(stream, q: queue.Queue) -> None:
        for line in stream:
            q.put(line)
        q.put(None)

    @staticmethod
    def _pump_err(proc, sink: list) -> None:
        for line in proc.stderr:
            if len(sink) < 1000:
                sink.append(line)

    def _drain(self, timeout_ms: int) -> list[dict]:
        out = []
        waiting: dict[int, dict] = {}
        wait = timeout_ms / 1000.0
        while True:
            try:
                line = self._lines.get(timeout=wait) if wait else self._lines.get_nowait()
            except queue.Empty:
                break
            wait = 0
            if line is None:
                break
            # stapbpf may print its own text without a newline ahead of ours
            start = line.find("CORR\t")
            if start < 0:
                continue
            line = line[start:]
            comm = COMM_RE.match(line.rstrip("\n"))
            if comm and int(comm.group(1)) in waiting:
                # the name's own handler may print after the call line: fill it in
                waiting.pop(int(comm.group(1)))["comm"] = comm.group(2)
            ev = parse_line(line, self.all_probes, self.source, self.host, self._entries)
            if ev is not None:
                out.append(ev)
                if not ev["comm"]:
                    waiting[ev["tid"]] = ev
            elif not comm:
                self.damaged_lines += 1
        return out

    def poll(self, timeout_ms: int = 100) -> list[dict]:
        if self.proc is None:
            return []
        return self._drain(timeout_ms)

    def stop(self) -> list[dict]:
        if self.proc is None:
            return []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # stap detaches and flushes on SIGINT
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(0.1)
        out = self._drain(0)
        self.proc = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        return out
