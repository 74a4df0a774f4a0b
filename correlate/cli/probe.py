"""`correlate probe` (stream probe events) and `correlate probes` (the catalog, resolved here).

bcc is imported only when probes start, so `correlate --help` stays fast without it.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from datetime import datetime, timezone

import click

from .. import exit_codes
from ..diagnostics import Diagnostics, report_diagnostics
from ..errors import CorrelateError
from ..events import to_json
from ..validate import clean_events
from ..outputs.terminal import safe_text
from .run_setup import detector_options
from ..probe import catalog
from ..probe.bcc_program import sites_by_probe, trap_plan
from ..probe.fuse_session import GROUP as FUSE
from ..probe.resolve import parse_offsets, resolve
from ..probe.wrappers import folds

GROUP_HELP = "gfapi, samba, all, or a plugin's group (repeatable)"


def _specs(groups: tuple[str, ...], options: dict | None = None) -> list:
    """Catalog specs for the groups, plugin probe points included (shaped by the detector
    settings in `options`, e.g. the io probes' threshold)."""
    from ..sources.probes import select_specs
    return select_specs(groups, options)


def _detector_settings(option_specs, config_path) -> dict:
    """The detector settings -o / --config ask for, as the probes see them in `run`."""
    if not option_specs and not config_path:
        return {}
    from ..detector import detector_settings
    from .run_setup import make_runner, parse_detector_options
    return detector_settings(make_runner({}, parse_detector_options(option_specs, config_path)).detectors)


def format_time(time_ns: int) -> str:
    sec, ns = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(sec, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def _note_nsec(key: str, value) -> str:
    if key.endswith("_nsec") and value == catalog.UTIME_OMIT:
        return "UTIME_OMIT"
    if key.endswith("_nsec") and value == catalog.UTIME_NOW:
        return "UTIME_NOW"
    return str(value)


def format_fuse(ev: dict) -> str:
    """One line for a FUSE request the fuse probes sent."""
    what = str(ev.get("opcode", "?"))
    if ev.get("syscall"):
        what = f"{ev['syscall']}/{what}" if ev["kind"] == "fuse.syscall" else f"{what}/{ev['syscall']}"
    parts = [format_time(ev["time_ns"]), ev["kind"], safe_text(what, 60),
             f"pid={ev.get('pid')}", f"tid={ev.get('tid')}", f"comm={safe_text(ev.get('comm') or '', 40)}",
             f"path={json.dumps(ev.get('path') or ev.get('nodeid'), ensure_ascii=True)}"]
    if ev.get("errno_name"):
        parts.append(f"errno={safe_text(ev['errno_name'], 20)}")
    took = ev.get("latency_ns", ev.get("waited_ns"))
    if isinstance(took, int):
        parts.append(f"{'latency' if 'latency_ns' in ev else 'waited'}={took / 1e6:.3f}ms")
    return " ".join(parts)


def format_event(ev: dict) -> str:
    """One readable line per event."""
    kind = ev.get("kind", "")
    if kind.startswith("fuse."):
        return format_fuse(ev)
    head = f"{format_time(ev['time_ns'])} {kind.removeprefix('probe.'):<6}"
    if kind == "probe.lost":
        return f"{head} {ev.get('count')} events lost (perf buffer full; total {ev.get('total')})"
    parts = [head, safe_text(ev.get("function", "?")),
             f"pid={ev.get('pid')}", f"tid={ev.get('tid')}", f"comm={safe_text(ev.get('comm', ''))}"]
    if kind == "probe.return":
        if "retval" in ev:
            parts.append(f"retval={ev['retval']}")
        if ev.get("errno_name"):
            parts.append(f"errno={safe_text(ev['errno_name'], 20)}")
        tally = ev.get("unsynced_writes") or {}
        if tally.get("count"):
            parts.append(f"unsynced_writes={tally['count']} ({tally.get('bytes')} bytes)")
        if ev.get("duration_ns") is not None:
            parts.append(f"duration={ev['duration_ns'] / 1e6:.3f}ms")
    for key, value in (ev.get("args") or {}).items():
        if isinstance(value, str):
            parts.append(f"{key}={json.dumps(value, ensure_ascii=True)}")
        else:
            parts.append(f"{key}={_note_nsec(key, value)}")
    if ev.get("unreadable"):
        parts.append("unreadable=" + ",".join(ev["unreadable"]))
    return " ".join(parts)


def describe_arg(arg) -> str:
    """name:kind@index, plus the pointer hops for strings reached through structs."""
    hops = "".join(f"->[{d:#x}]" if isinstance(d, int) else f"->[{d}]" for d in arg.deref)
    return f"{arg.name}:{arg.kind}@{arg.index}{hops}"


@click.command()
@click.option("--probe", "groups", multiple=True, default=("gfapi",), show_default=True,
              metavar="GROUP", help=GROUP_HELP)
@click.option("--pid", type=int, help="Only this process (default: every process using the library, "
                                      "including ones started later).")
@click.option("--json", "as_json", is_flag=True, help="JSON Lines output (the event contract).")
@click.option("--backend", type=click.Choice(["auto", "bcc", "stap"]), default="auto", show_default=True,
              help="auto takes bcc, then stap.")
@click.option("--probe-offset", "offsets", multiple=True, metavar="FUNC=0xADDR",
              help="Where FUNC is when it cannot be found (ELF virtual address, as objdump -d "
                   "shows it). Repeatable.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: Ctrl-C/SIGTERM).")
@detector_options
def probe(groups, pid, as_json, backend, offsets, duration, option_specs, config_path):
    """Stream libgfapi / Samba vfs_glusterfs calls as they happen (needs root).

    Every call of glfs_init, the time setters and Samba's is printed with its arguments
    (paths, signed atime/mtime seconds and nanoseconds), and its return with the value and
    duration (for the gfapi time setters only when it failed). A glfs_init call without a
    return is a mount that hangs. The file operations (open, read, write, fsync, close...)
    are printed only when they fail.

    \b
    Examples:
      correlate probe --probe gfapi
      correlate probe --probe samba --json --duration 30
      correlate probe --probe all --pid 4242
      correlate probe --probe samba --probe-offset vfs_gluster_fntimes=0x80e0
      correlate probe --backend stap --probe gfapi
      correlate probe --probe io -o app-latency.after_s=0.05 --json   # io calls of 50 ms or more

    The io group sends only calls that took app-latency's threshold or longer, or failed;
    -o/--config set it as for `correlate run`, so a recording holds what `analyze` will use.
    """
    from ..probe.session import ProbeSession

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if FUSE in groups:   # kernel tracepoints beside (or instead of) the uprobe groups
        from ..sources.probes import describe_session, open_probe_session
        session = open_probe_session(groups, pid=pid, backend=backend, offsets=offsets,
                                     options=_detector_settings(option_specs, config_path))
        for line in describe_session(session):
            click.echo(f"correlate: {safe_text(line, 500)}", err=True)
        click.echo("correlate: probes attached; Ctrl-C to stop", err=True)
    else:
        session = ProbeSession(_specs(groups, _detector_settings(option_specs, config_path)), pid=pid,
                               backend=backend, offsets=parse_offsets(offsets))
        session.start()
        for spec, why in session.unresolved:
            click.echo(f"correlate: skipping {spec.name}: {why}", err=True)
        for rp in session.resolved:
            for note in rp.notes:
                click.echo(f"correlate: {rp.spec.name}: {note}", err=True)
        for rp, why in getattr(session.collector, "skipped", []):
            click.echo(f"correlate: {session.backend_name}: {rp.spec.name}: {why}", err=True)
        refused = getattr(session.collector, "links_refused", "")
        if refused:
            click.echo(f"correlate: {session.backend_name}: attached through perf events: {safe_text(refused, 500)}", err=True)
        click.echo(f"correlate: {session.attached} probes attached with {session.backend_name}; "
                   "Ctrl-C to stop", err=True)

    diag = Diagnostics("probes")     # records of the wrong type: dropped and counted

    def emit(events):
        for ev in clean_events(events, diag):
            click.echo(to_json(ev) if as_json else format_event(ev))

    deadline = None if duration is None else time.monotonic() + duration
    interrupted = False
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            emit(session.poll(100))
    except KeyboardInterrupt:      # what was collected is still printed, then exit 130
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        tail = session.stop()
    emit(tail)
    report_diagnostics([diag])
    summary = session.summary()
    clock = summary.get("clock")
    clock_note = f", clock offset error <= {clock['error_ns']} ns" if clock else ""
    click.echo(f"correlate: {summary['events']} events, {summary['lost']} lost{clock_note}", err=True)
    if interrupted:
        sys.exit(exit_codes.INTERRUPTED)


@click.command()
@click.option("--probe", "groups", multiple=True, default=("all",), show_default=True,
              metavar="GROUP", help=GROUP_HELP)
@click.option("--pid", type=int, help="Resolve the libraries this process has mapped.")
@click.option("--probe-offset", "offsets", multiple=True, metavar="FUNC=0xADDR",
              help="Where FUNC is when it cannot be found (ELF virtual address, as objdump -d "
                   "shows it). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per probe.")
def probes(groups, pid, offsets, as_json):
    """List the probe catalog and how each probe resolves on this machine (no root needed).

    Methods: dynsym, symtab, debuginfo (a separate debug file), eh_frame+plt (a static
    function in a stripped file, found as the function that calls the listed imports),
    offset (--probe-offset).

    \b
    Examples:
      correlate probes
      correlate probes --probe samba --json
      correlate probes --pid $(pgrep -o smbd)
    """
    offsets_map = parse_offsets(offsets)
    rows, resolved = [], []
    for spec in _specs(groups):
        row = {"probe": spec.name, "group": spec.group, "function": spec.function,
               "args": [describe_arg(a) for a in spec.args], "retprobe": spec.retprobe,
               "emit": spec.emit, "implemented_by": spec.implemented_by or None, "seen_at": None,
               "traps": None}
        try:
            rp = resolve(spec, pid, offsets_map)
            row.update(library=rp.path, resolved_as=rp.function, method=rp.method,
                       address=f"{rp.address:#x}", detail=rp.detail,
                       args=[describe_arg(a) for a in rp.arguments], notes=list(rp.notes))
            resolved.append((row, rp))
        except CorrelateError as exc:
            row.update(library=spec.library, error=str(exc))
        rows.append((spec, row))
    rps = [rp for _row, rp in resolved]
    folded = folds(rps)
    for i, fold in folded.items():    # bcc traps these where they call their implementation
        resolved[i][0]["seen_at"] = rps[fold.inner].function
    # off the entry where it would be single-stepped (trap_sites.py)
    for i, sites in sites_by_probe(rps, folded, trap_plan(rps, folded)).items():
        if sites.why:
            resolved[i][0]["traps"] = {
                "call": f"{sites.call:#x}", "why": sites.why,
                "return": None if sites.ret is None else f"{sites.ret:#x}",
                "return_by": None if sites.ret is None else
                ("uprobe reading %rax" if sites.ret_reads_rax else "uretprobe")}
    for spec, row in rows:
        if as_json:
            click.echo(json.dumps(row))
            continue
        only = {"failures": " (failures only)", "calls": " (when it failed)",
                "slow": f" (only {spec.slow_ns / 1e6:g} ms or slower, or failed)"}.get(spec.emit, "")
        ret = (" +return" + only) if spec.retprobe else ""
        if "error" in row:
            click.echo(f"{spec.name:<28} UNRESOLVED  {row['error']}")
        else:
            extra = f" ({row['detail']})" if row["detail"] else ""
            alias = f" as {row['resolved_as']}" if row["resolved_as"] != spec.function else ""
            click.echo(f"{spec.name:<28} {row['method']:<13} {row['address']:>9}  {row['library']}"
                       f"{alias}{ret}{extra}")
            click.echo(f"{'':<28} args: {', '.join(row['args']) or '-'}")
            if row["seen_at"]:
                click.echo(f"{'':<28} bcc: seen in {row['seen_at']}, which it calls (no trap of its own)")
            if row["traps"]:
                click.echo(f"{'':<28} bcc: {safe_text(row['traps']['why'])}")
            for note in row["notes"]:
                click.echo(f"{'':<28} note: {note}")
