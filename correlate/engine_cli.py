"""`correlate run` (live), `correlate analyze` (offline) and `correlate plugins`."""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time

import click

from .detector import DetectorRunner, details_needed, load_detectors
from .diagnostics import Diagnostics, report_diagnostics
from .errors import CorrelateError
from .merge import DEFAULT_WINDOW_NS, LiveMerger, merge
from .parallel_cli import parallel_for, parallel_options
from .pipeline import Reporter, TimelineWriter, run_pipeline
from .plugin_manager import call_each, get_plugin_manager, plugin_info
from .sources import open_input, read_timeline


def _detectors(unanswered_after: float) -> DetectorRunner:
    pm = get_plugin_manager()
    detectors, errors = load_detectors(pm, {"unanswered_after_ns": int(unanswered_after * 1e9)})

    def notify(finding):
        for name, _result, exc in call_each(pm, "correlate_finding", finding=finding):
            if exc is not None:   # a notifier's bug is reported, the run goes on
                click.echo(f"correlate: plugin {name}: correlate_finding failed: {exc}", err=True)

    return DetectorRunner(detectors, on_new_finding=notify, load_errors=errors)


def decoding_options(runner: DetectorRunner, every_event: bool) -> dict:
    """What the capture decoders decode: everything when every event is printed or saved,
    else the details some detector reads, the rest kept for evidence (open_input's options)."""
    if every_event:
        return {"details": True}
    needed = details_needed(runner.detectors)
    return {"details": True} if needed is None else {"details": needed, "details_later": True}


def _reporter(json_out: bool, events: bool, timeline: str | None, command: str) -> Reporter:
    writer = TimelineWriter(timeline, command=command, started_ns=time.time_ns()) if timeline else None
    if not sys.stdout.isatty():
        sys.stdout.reconfigure(line_buffering=True)
    return Reporter(json_out=json_out, show_events=events, timeline=writer)


def _finish(reporter, runner, diags, timeline, temporary, writers, failed=False) -> int:
    """After a run: plugin outputs, what was skipped, a summary line; the exit code (1 when
    an input was damaged or a source failed)."""
    if writers:
        _write_outputs(writers, timeline)
    if temporary:
        os.unlink(temporary)
    fatal = report_diagnostics(diags)
    n = reporter.counts
    msg = f"correlate: {n['events']} events, {n['findings']} findings"
    if runner.disabled:
        msg += "; disabled detectors: " + ", ".join(f"{k} ({v})" for k, v in runner.disabled.items())
    if timeline and not temporary:
        msg += f"; timeline written to {timeline}"
    click.echo(msg, err=True)
    return 1 if fatal or failed else 0


common_options = [
    click.option("--json", "json_out", is_flag=True,
                 help="JSON lines on stdout (events with --events, and findings)."),
    click.option("--events", "-e", is_flag=True, help="Print every event, not only findings."),
    click.option("--timeline", type=click.Path(dir_okay=False, writable=True),
                 help="Write the merged timeline (events and findings) as JSON Lines."),
    click.option("--unanswered-after", type=float, default=10.0, show_default=True,
                 help="Seconds without a reply before a call counts as unanswered."),
    click.option("--output", "outputs", multiple=True, metavar="FORMAT=PATH",
                 help="Also write the merged events in a format a plugin adds "
                      "(correlate_outputs hook). Repeatable."),
]


def _output_writers(outputs) -> list[tuple[str, callable, str]]:
    """Resolve FORMAT=PATH against the formats plugins provide, before the run starts."""
    if not outputs:
        return []
    formats = {}
    for name, provided, exc in call_each(get_plugin_manager(), "correlate_outputs"):
        if exc is not None:
            click.echo(f"correlate: plugin {name}: correlate_outputs failed: {exc}", err=True)
        formats.update(provided or {})
    writers = []
    for spec in outputs:
        name, sep, path = spec.partition("=")
        if not sep or name not in formats:
            known = ", ".join(sorted(formats)) or "none (no plugin provides one)"
            raise click.BadParameter(f"{spec!r}: expected FORMAT=PATH with FORMAT one of: {known}",
                                     param_hint="--output")
        writers.append((name, formats[name], path))
    return writers


def _write_outputs(writers, timeline_path: str) -> None:
    """Plugin writers read the merged timeline back, so the run itself stays streaming."""
    for name, write, path in writers:
        with open(timeline_path, "rb") as f:
            try:
                write(read_timeline(f, timeline_path, Diagnostics(timeline_path)), path)
            except Exception as exc:
                click.echo(f"correlate: output format {name} failed: {exc}", err=True)
                continue
        click.echo(f"correlate: {name} output written to {path}", err=True)


def _timeline_path(timeline: str | None, writers) -> tuple[str | None, str | None]:
    """The timeline to write: the user's, or a temporary one when only outputs need it."""
    if timeline or not writers:
        return timeline, None
    fd, tmp = tempfile.mkstemp(prefix="correlate-", suffix=".jsonl")
    os.close(fd)
    return tmp, tmp


def with_common(f):
    for opt in reversed(common_options):
        f = opt(f)
    return f


@click.command()
@click.option("--pcap", "pcaps", multiple=True, metavar="FILE|-",
              help="Capture to read; `-` is stdin (tcpdump -U -w -). Repeatable.")
@click.option("--probe", "probe_groups", multiple=True, metavar="GROUP",
              help="Attach process probes: gfapi, samba, all, or a plugin's group. Repeatable.")
@click.option("--pid", type=int, help="Probe only this process.")
@click.option("--backend", type=click.Choice(["auto", "bcc", "stap"]), default="auto",
              show_default=True, help="Probe backend.")
@click.option("--probe-offset", "probe_offsets", multiple=True, metavar="FUNC=0xOFF",
              help="Probe a function at this file offset (stripped binaries).")
@click.option("--log", "logs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Gluster log file to merge in. Repeatable.")
@click.option("--duration", type=float, help="Stop after this many seconds.")
@click.option("--window-ms", type=int, default=DEFAULT_WINDOW_NS // 1_000_000, show_default=True,
              help="Reorder window: events are held this long so they leave in time order.")
@click.option("--profile-every", type=float, metavar="SECONDS",
              help="Print the volume profile (as `correlate profile`) this often, and at the end.")
@with_common
def run(pcaps, probe_groups, pid, backend, probe_offsets, logs, duration, window_ms, profile_every,
        json_out, events, timeline, unanswered_after, outputs):
    """Live: merge probes and captures on one timeline and print findings as they happen.

    Stops at the end of the captures, after --duration, or on Ctrl-C / SIGTERM, with every
    event collected so far written.

    \b
    Examples:
      tcpdump -i any -s 0 -U --immediate-mode -B 262144 -w - 'tcp portrange 24007-24100 or tcp portrange 49152-49251 or icmp' \\
          | correlate run --probe gfapi --pcap -
      correlate run --probe all --timeline /tmp/incident.jsonl --duration 60
      correlate run --probe samba --pid 4242 --json
      correlate run --pcap old.pcap --pcap other-host.pcapng
      tcpdump -i any -s 0 -U -w - 'tcp portrange 49152-49251' | correlate run --pcap - --profile-every 10
    """
    if not pcaps and not probe_groups and not logs:
        raise click.UsageError("nothing to run: give --pcap and/or --probe (see --help)")
    writers = _output_writers(outputs)
    timeline, temporary = _timeline_path(timeline, writers)
    runner = _detectors(unanswered_after)
    decoding = decoding_options(runner, bool(json_out or events or timeline))
    merger = LiveMerger(window_ns=window_ms * 1_000_000)
    diags: list[Diagnostics] = []

    def stop(signum=None, frame=None):
        merger.stop()

    # Before anything can block (stdin may stay silent): a signal ends the run cleanly.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for path in (*pcaps, *logs):
        if path == "-":   # stdin is opened in its source thread: reading its header may block
            merger.add("stdin", _opened_later(path, diags, decoding))
        else:             # files: header errors are reported now, before anything starts
            inp = open_input(path, **decoding)
            diags.append(inp.diag)
            merger.add(inp.name, lambda it=inp.events: it)
    probe_stats = {}
    if probe_groups:
        from .probe_source import describe_session, open_probe_session, probe_events
        session = open_probe_session(probe_groups, pid=pid, backend=backend, offsets=probe_offsets)
        for line in describe_session(session):
            click.echo(f"correlate: {line}", err=True)
        merger.add(f"probes:{session.backend_name}",
                   lambda: probe_events(session, merger.stopping, probe_stats), finite=False)

    if duration:
        timer = threading.Timer(duration, stop)
        timer.daemon = True
        timer.start()
    reporter = _reporter(json_out, events, timeline, "run")
    stream = merger.events()
    periodic = None
    if profile_every:
        from .profile_cli import PeriodicProfile
        periodic = PeriodicProfile(profile_every, json_out)
        stream = periodic.events(stream)
    try:
        run_pipeline(stream, runner, reporter)
        if periodic:
            periodic.print()
    finally:
        reporter.close()
    for name, exc in merger.errors:
        click.echo(f"correlate: source {name} failed: {exc}", err=True)
    if probe_stats.get("lost"):
        click.echo(f"correlate: probes lost {probe_stats['lost']} events (perf buffer full)", err=True)
    code = _finish(reporter, runner, diags, timeline, temporary, writers, failed=bool(merger.errors))
    if merger.blocked_sources():
        # A source thread still blocks in a read (stdin from a tcpdump that runs on): the
        # interpreter cannot finalize with it holding stdin's lock. All output is written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _opened_later(path: str, diags: list[Diagnostics], decoding: dict):
    def produce():
        inp = open_input(path, **decoding)
        diags.append(inp.diag)
        yield from inp.events
    return produce


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--host", "hosts", multiple=True, metavar="NAME=INPUT",
              help="Name the host an input was recorded on.")
@with_common
@parallel_options
def analyze(inputs, hosts, json_out, events, timeline, unanswered_after, outputs, jobs, scheduler):
    """Offline: run the detectors over captures, saved timelines and Gluster logs.

    Inputs are recognised by content (pcap, pcapng, gzip'd, JSON Lines timeline, Gluster
    log); `-` is stdin. With --json, findings are printed as JSON lines (layer "finding").

    \b
    Examples:
      correlate analyze tests/captures/firewall-drop.pcap
      correlate analyze client.pcapng /var/log/glusterfs/mnt.log --timeline merged.jsonl
      correlate analyze --json saved-timeline.jsonl | jq .title
      correlate analyze --jobs 2 big-capture.pcap other-host.pcap
      correlate analyze --scheduler tcp://10.0.0.5:8786 /shared/captures/*.pcap
    """
    host_of = dict(h.split("=", 1) for h in hosts if "=" in h)
    runner = _detectors(unanswered_after)
    writers = _output_writers(outputs)
    decoding = decoding_options(runner, bool(json_out or events or timeline or writers))
    with parallel_for(inputs, jobs, scheduler) as parallel:
        opened = [open_input(path, host=host_of.get(path), parallel=parallel, **decoding)
                  for path in inputs]
        timeline, temporary = _timeline_path(timeline, writers)
        reporter = _reporter(json_out, events, timeline, "analyze")
        try:
            run_pipeline(merge([i.events for i in opened]), runner, reporter)
        finally:
            reporter.close()
    sys.exit(_finish(reporter, runner, [i.diag for i in opened], timeline, temporary, writers))


@click.command("plugins")
@click.option("--json", "json_out", is_flag=True, help="Print as JSON.")
def plugins_cmd(json_out):
    """List loaded plugins (built-in detectors included), their versions and hooks.

    Set CORRELATE_TRACE_HOOKS=1 to see every hook call of a run on stderr.

    \b
    Examples:
      correlate plugins
      CORRELATE_TRACE_HOOKS=1 correlate analyze capture.pcap
    """
    pm = get_plugin_manager()
    rows = plugin_info(pm)
    detectors, errors = load_detectors(pm, {})
    ids = {}
    for d in detectors:
        ids.setdefault(type(d).__module__, []).append(getattr(d, "id", type(d).__name__))
    for r in rows:
        r["detectors"] = ids.get(r["module"], [])
    if json_out:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        dist = f"{r['distribution']} {r['version']}" if r["distribution"] else "(not from a package)"
        if r["status"] == "failed":
            click.echo(f"{r['name']:<20} {dist:<20} FAILED: {r['error']}")
            continue
        click.echo(f"{r['name']:<20} {dist:<20} hooks: {', '.join(r['hooks'])}"
                   + (f"  detectors: {', '.join(r['detectors'])}" if r["detectors"] else ""))
    failed = {r["name"] for r in rows if r["status"] == "failed"}
    for e in errors:
        if e["detector"] not in failed:    # a failed import is already in its row
            click.echo(f"correlate: {e['title']}: {e['explanation']}", err=True)
    if not rows:
        raise CorrelateError("no plugins loaded: is correlate installed (pip install -e .)?")
