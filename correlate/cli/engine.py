"""`correlate run` (live) and `correlate analyze` (offline)."""
from __future__ import annotations

import os
import signal
import shutil
import sys
import threading
import time

import click

from .. import exit_codes
from ..sources import lag
from .types import SECONDS, Seconds
from ..detector import details_needed
from ..engine.detector_runner import DetectorRunner
from ..errors import CorrelateError
from ..events import make_event, to_json
from ..diagnostics import Diagnostics, report_diagnostics
from ..engine.merge import DEFAULT_WINDOW_NS, LiveMerger, merge
from ..outputs.terminal import Progress, color_option, safe_text, use_color
from .parallel import decode_stdin_apart, parallel_for, parallel_options, stdin_in_process
from ..engine.pipeline import Reporter, TimelineWriter, run_pipeline
from .run_setup import (detector_options, fail_on_option, make_runner, output_writers, parse_detector_options,
                        parse_policy, reaches, selection_options, timeline_path, topology_option,
                        write_outputs)
from ..sources import open_input
from .keylog import keylog_option, keylog_to_write, open_keylog
from ..sources.decoder_process import DecoderProcess


WITHOUT_PROBES = ("capture", "log")    # input kinds that never carry probe events


def _detectors(unanswered_after: float, option_specs, config_path, only_detectors=(),
               skip_detectors=(), suppress_specs=(), topology=()) -> DetectorRunner:
    options = parse_detector_options(option_specs, config_path)
    policy = parse_policy(config_path, only_detectors, skip_detectors, suppress_specs)
    return make_runner({"unanswered_after_ns": int(unanswered_after * 1e9)}, options, policy,
                       topology)


def decoding_options(runner: DetectorRunner, every_event: bool) -> dict:
    """What the capture decoders decode: everything when every event is printed or saved,
    else the details some detector reads, the rest kept for evidence (open_input's options)."""
    if every_event:
        return {"details": True}
    needed = details_needed(runner.detectors)
    return {"details": True} if needed is None else {"details": needed, "details_later": True}


def _reporter(json_out: bool, events: bool, timeline: str | None, command: str, color: str,
              progress=None) -> Reporter:
    writer = TimelineWriter(timeline, command=command, started_ns=time.time_ns()) if timeline else None
    if not sys.stdout.isatty():
        sys.stdout.reconfigure(line_buffering=True)
    return Reporter(json_out=json_out, show_events=events, timeline=writer,
                    color=use_color(color, sys.stdout), progress=progress)


def _finish(reporter, runner, diags, timeline, temporary, writers, fail_on: str,
            source_errors=()) -> int:
    """After a run: plugin outputs, what was skipped, a summary line; the exit code
    (correlate.exit_codes)."""
    output_failed = bool(writers) and not write_outputs(writers, timeline)
    output_failed |= bool(reporter.timeline and reporter.timeline.failed)
    if temporary:
        os.unlink(temporary)
    fatal = report_diagnostics(diags)
    for line in runner.drop_lines():
        click.echo(f"correlate: {safe_text(line, 500)}", err=True)
    if runner.policy is not None and runner.policy.summary():
        click.echo(f"correlate: {safe_text(runner.policy.summary(), 2000)}", err=True)
    n = reporter.counts
    msg = f"correlate: {n['events']} events, {n['findings']} findings"
    if runner.disabled:   # plugin names and exception text: escaped like any input text
        msg += "; disabled detectors: " + ", ".join(f"{safe_text(k, 100)} ({safe_text(v, 500)})"
                                                    for k, v in runner.disabled.items())
    if timeline and not temporary:
        msg += f"; timeline written to {timeline}"
    click.echo(msg, err=True)
    unreadable = any(isinstance(exc, CorrelateError) for exc in source_errors)
    return exit_codes.outcome(
        output_failed=output_failed, input_damaged=fatal or unreadable,
        part_failed=(any(not isinstance(exc, CorrelateError) for exc in source_errors)
                     or bool(runner.disabled)
                     or bool(runner.plugin_failures)),
        findings=any(reaches(s, fail_on.lower()) for s in reporter.severities))


common_options = [
    click.option("--json", "json_out", is_flag=True,
                 help="JSON lines on stdout (events with --events, and findings)."),
    click.option("--events", "-e", is_flag=True, help="Print every event, not only findings."),
    click.option("--timeline", type=click.Path(dir_okay=False, writable=True),
                 help="Write the merged timeline (events and findings) as JSON Lines."),
    click.option("--unanswered-after", type=SECONDS, default=10.0, show_default=True,
                 help="Seconds without a reply before a call counts as unanswered (on a "
                      "connection silent since the call, judged 30 s after it at the soonest: "
                      "Gluster's TCP keepalive first shows a reply the capture lost)."),
    click.option("--output", "outputs", multiple=True, metavar="FORMAT=PATH",
                 help="Also write the merged events in a format a plugin adds "
                      "(correlate_outputs hook). Repeatable."),
]


def with_common(f):
    for opt in reversed(common_options):
        f = opt(f)
    return topology_option(fail_on_option(selection_options(detector_options(color_option(f)))))


@click.command()
@click.option("--pcap", "pcaps", multiple=True, metavar="FILE|-",
              help="Capture to read; `-` is stdin (tcpdump -U -w -). Repeatable.")
@click.option("--probe", "probe_groups", multiple=True, metavar="GROUP",
              help="Attach process probes: gfapi, samba, fuse (kernel FUSE requests), tls (the "
                   "plaintext of TLS volumes, decoded as RPC), tls-keys (TLS volumes' session "
                   "keys, to decrypt --pcap; a trap per handshake only), all, or a plugin's "
                   "group. Repeatable.")
@click.option("--pid", type=int, help="Probe only this process.")
@click.option("--backend", type=click.Choice(["auto", "bcc", "stap"]), default="auto",
              show_default=True, help="Probe backend.")
@click.option("--probe-offset", "probe_offsets", multiple=True, metavar="FUNC=0xADDR",
              help="Where FUNC is when it cannot be found (ELF virtual address, as objdump -d "
                   "shows it). Repeatable.")
@click.option("--log", "logs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Gluster log file to merge in. Repeatable.")
@click.option("--duration", type=SECONDS, help="Stop after this many seconds.")
@click.option("--window-ms", type=int, default=DEFAULT_WINDOW_NS // 1_000_000, show_default=True,
              help="Reorder window: events are held this long so they leave in time order.")
@click.option("--profile-every", type=SECONDS, metavar="SECONDS",
              help="Print the volume profile (as `correlate profile`) this often, and at the end.")
@click.option("--max-lag", type=SECONDS, default=lag.WARN_S, show_default=True, metavar="SECONDS",
              help="Warn when reading `--pcap -` falls this far behind the packets' times.")
@click.option("--skip-behind", type=Seconds(zero_ok=True), default=lag.SKIP_S, show_default=True,
              metavar="SECONDS", help="This far behind, skip packets (counted) to catch up "
                                      "before the kernel drops them uncounted; 0: never.")
@keylog_option
@with_common
def run(pcaps, probe_groups, pid, backend, probe_offsets, logs, duration, window_ms, profile_every,
        max_lag, skip_behind, tls_keylog,
        json_out, events, timeline, unanswered_after, outputs, color, option_specs, config_path,
        only_detectors, skip_detectors, suppress_specs, fail_on, topology):
    """Live: merge probes and captures on one timeline and print findings as they happen.

    Stops at the end of the captures, after --duration, or on Ctrl-C / SIGTERM, with every
    event collected so far written.

    \b
    Examples:
      tcpdump -i any -s 0 -U --immediate-mode -B 262144 -w - 'tcp portrange 24007-24100 or tcp portrange 49152-49251 or icmp' \\
          | correlate run --probe gfapi --pcap -
      correlate run --probe all --timeline /tmp/incident.jsonl --duration 60
      correlate run --probe samba --pid 4242 --json
      correlate run --probe fuse --pcap -      # applications on a FUSE mount, with the wire
      tcpdump -i any -s 0 -U -w - 'tcp portrange 24007-24100 or tcp portrange 49152-49251 or icmp' | correlate run --probe tls-keys --pcap -
      correlate run --pcap old.pcap --pcap other-host.pcapng
      correlate run --pcap - -o rpc-unanswered.after_s=30 --config detectors.toml
      correlate run --probe all --pcap - --no-detector app-latency    # and no io probes
      correlate run --pcap - --suppress rpc-unanswered:client=127.0.0.1:*
      correlate run --pcap - --topology live       # bricks named though the clients connected earlier
      tcpdump -i any -s 0 -U -w - 'tcp portrange 24007-24100 or tcp portrange 49152-49251 or icmp' | correlate run --pcap - --profile-every 10
    """
    if not pcaps and not probe_groups and not logs:
        raise click.UsageError("nothing to run: give --pcap and/or --probe (see --help)")
    writers = output_writers(outputs)
    timeline, temporary = timeline_path(timeline, writers)
    runner = _detectors(unanswered_after, option_specs, config_path, only_detectors,
                        skip_detectors, suppress_specs, topology)
    decoding = decoding_options(runner, bool(json_out or events or timeline))
    keys_dir = None
    if "tls-keys" in probe_groups:
        if not pcaps and tls_keylog is None:
            raise click.UsageError("--probe tls-keys gives the keys to decrypt a capture: give "
                                   "--pcap, or --tls-keylog FILE to keep them for later")
        tls_keylog, keys_dir = keylog_to_write(tls_keylog)
    keylog = open_keylog(tls_keylog, follow="-" in pcaps or "tls-keys" in probe_groups)
    merger = LiveMerger(window_ns=window_ms * 1_000_000)
    watch = merger.watch = lag.LagWatch(max_lag, skip_behind) if "-" in pcaps else None
    diags: list[Diagnostics] = []

    interrupted = []

    def stop(signum=None, frame=None):
        if signum == signal.SIGINT:    # Ctrl-C: exit 130 (SIGTERM and --duration end normally)
            interrupted.append(signum)
        merger.stop()

    # Before anything can block (stdin may stay silent): a signal ends the run cleanly.
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    kinds = []
    decoder = None
    for path in (*pcaps, *logs):
        if path == "-" and decode_stdin_apart():
            # decoded in a process of its own (forked now, before any thread), which opens it
            watch.share()
            decoder = DecoderProcess(dict(decoding, skip=watch.skip, keylog=keylog),
                                     on_kind=lambda kind: _stdin_kind(kind, runner))
            diags.append(decoder.diag)
            merger.add("stdin", decoder.batches, batched=True)
        elif path == "-":   # stdin is opened in its source thread: reading its header may block
            merger.add("stdin", _opened_later(path, diags, dict(decoding, skip=watch.skip,
                                                                keylog=keylog), runner))
        else:             # files: header errors are reported now, before anything starts
            inp = open_input(path, keylog=keylog, **decoding)
            diags.append(inp.diag)
            kinds.append(inp.kind)
            merger.add(inp.name, lambda it=inp.events: it)
    runner.expect_probes(bool(probe_groups) or any(k not in WITHOUT_PROBES for k in kinds))
    # before probes attach: an output that cannot be written stops the run here, in one line
    reporter = _reporter(json_out, events, timeline, "run", color)
    probe_stats = {}
    if "tls" in probe_groups:
        from ..sources.probes import open_tls_collector, probe_events
        tls = open_tls_collector(pid=pid, decoding=decoding)
        click.echo(f"correlate: probes attached (tls: SSL_read/SSL_write in {tls.path})", err=True)
        merger.add("probes:tls", lambda: probe_events(tls, merger.stopping, {}), finite=False)
        probe_groups = tuple(g for g in probe_groups if g != "tls")
    if "tls-keys" in probe_groups:
        from ..sources.probes import open_tls_key_collector, probe_events
        try:
            keys = open_tls_key_collector(tls_keylog, pid=pid)
        except BaseException:
            if keys_dir is not None:
                shutil.rmtree(keys_dir, ignore_errors=True)
            raise
        click.echo(f"correlate: probes attached (tls-keys: handshakes in {keys.path}; "
                   f"keys to {tls_keylog})", err=True)
        merger.add("probes:tls-keys", lambda: probe_events(keys, merger.stopping, {}), finite=False)
        probe_groups = tuple(g for g in probe_groups if g != "tls-keys")
    if probe_groups:
        from ..sources.probes import describe_session, open_probe_session, probe_events
        from ..detector import detector_settings
        # the probes send what the detectors, as configured, will use (e.g. app-latency's threshold)
        # ... and no probe points of a plugin whose every detector is off
        session = open_probe_session(probe_groups, pid=pid, backend=backend, offsets=probe_offsets,
                                     options=detector_settings(runner.detectors),
                                     skip_plugins=runner.policy.idle_plugins())
        probe_diag = Diagnostics("probes")     # records of the wrong type: counted as skips
        diags.append(probe_diag)
        for line in describe_session(session):
            click.echo(f"correlate: {safe_text(line, 500)}", err=True)
        merger.add(f"probes:{session.backend_name}",
                   lambda: probe_events(session, merger.stopping, probe_stats, probe_diag),
                   finite=False)

    if duration:
        timer = threading.Timer(duration, stop)
        timer.daemon = True
        timer.start()
    stream = merger.events()
    periodic = None
    if profile_every:
        from .profile import PeriodicProfile
        periodic = PeriodicProfile(profile_every, json_out, topology=topology)
        stream = periodic.events(stream)
    try:
        run_pipeline(stream, runner, reporter)
        if periodic:
            periodic.print()
        if watch is not None and json_out:
            reporter.out.write(to_json(make_event(
                time.time_ns(), "wire", "capture.diagnostics", "stdin", lag=watch.summary(),
                skipped=dict(next((d.counts for d in diags if d.source == "stdin"), {})))) + "\n")
    finally:
        reporter.close()
        if decoder is not None:
            decoder.stop()           # still reading a stdin that goes on (Ctrl-C, --duration)
        if keys_dir is not None:     # the keys a run kept to itself go with it
            shutil.rmtree(keys_dir, ignore_errors=True)
    if watch is not None and watch.closing_line():
        click.echo(watch.closing_line(), err=True)
    for name, exc in merger.errors:
        if isinstance(exc, CorrelateError):     # names its input itself
            click.echo(f"correlate: {safe_text(str(exc), 2000)}", err=True)
        else:
            click.echo(f"correlate: source {name} failed: {safe_text(str(exc), 2000)}", err=True)
    if probe_stats.get("lost"):
        click.echo(f"correlate: probes lost {probe_stats['lost']} events (perf buffer full)", err=True)
    code = _finish(reporter, runner, diags, timeline, temporary, writers, fail_on,
                   source_errors=[exc for _name, exc in merger.errors])
    if interrupted:
        code = exit_codes.INTERRUPTED
    if merger.blocked_sources():
        # A source thread still blocks in a read (stdin from a tcpdump that runs on): the
        # interpreter cannot finalize with it holding stdin's lock. All output is written.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _stdin_kind(kind: str, runner: DetectorRunner) -> None:
    if kind not in WITHOUT_PROBES:    # a timeline given as --pcap -: it may hold some
        runner.expect_probes(True)


def _opened_later(path: str, diags: list[Diagnostics], decoding: dict, runner: DetectorRunner):
    def produce():
        inp = open_input(path, **decoding)
        diags.append(inp.diag)
        _stdin_kind(inp.kind, runner)
        yield from inp.events
    return produce


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--host", "hosts", multiple=True, metavar="NAME=INPUT",
              help="Name the host an input was recorded on.")
@with_common
@parallel_options
@keylog_option
def analyze(inputs, hosts, json_out, events, timeline, unanswered_after, outputs, color,
            option_specs, config_path, only_detectors, skip_detectors, suppress_specs, fail_on, topology,
            jobs, scheduler, tls_keylog):
    """Offline: run the detectors over captures, saved timelines and Gluster logs.

    Inputs are recognised by content (pcap, pcapng, gzip'd, JSON Lines timeline, Gluster
    log); `-` is stdin. With --json, findings are printed as JSON lines (layer "finding").

    \b
    Examples:
      correlate analyze tests/captures/firewall-drop.pcap
      correlate analyze client.pcapng /var/log/glusterfs/mnt.log --timeline merged.jsonl
      correlate analyze --json saved-timeline.jsonl | jq -r 'select(.kind == "finding") | .title'
      NO_COLOR=1 correlate analyze capture.pcap      # or --color never
      correlate analyze capture.pcap -o rpc-unanswered.after_s=2
      correlate analyze tests/captures/brick-hang.pcap --no-detector rpc-unanswered
      correlate analyze capture.pcap --detector stale-handle --detector lost-write
      correlate analyze capture.pcap --suppress stale-handle:brick=127.0.0.2:/srv/b1
      correlate analyze capture.pcap --suppress 'slow-brick:procedure=MKDIR' --suppress no-space
      correlate analyze --fail-on error nightly.pcap && echo "no error found"
      correlate analyze late-start.pcap --topology volinfo.xml --topology volstatus.xml
      correlate analyze --jobs 2 big-capture.pcap other-host.pcap
      correlate analyze --tls-keylog keys.log tls-volume.pcap   # keys from run --probe tls-keys
      correlate analyze --scheduler tcp://scheduler-host:8786 /shared/captures/*.pcap
    """
    host_of = dict(h.split("=", 1) for h in hosts if "=" in h)
    runner = _detectors(unanswered_after, option_specs, config_path, only_detectors,
                        skip_detectors, suppress_specs, topology)
    writers = output_writers(outputs)
    decoding = decoding_options(runner, bool(json_out or events or timeline or writers))
    keylog = open_keylog(tls_keylog)
    if keylog is not None:
        decoding["keylog"] = keylog
    with parallel_for(inputs, jobs, scheduler, detecting=True) as parallel:
        opened = [stdin_in_process(dict(decoding, host=host_of.get(path)))
                  if path == "-" and jobs != 1 and decode_stdin_apart() else
                  open_input(path, host=host_of.get(path), parallel=parallel, **decoding)
                  for path in inputs]
        runner.expect_probes(any(i.kind not in WITHOUT_PROBES for i in opened))
        timeline, temporary = timeline_path(timeline, writers)
        progress = Progress()
        reporter = _reporter(json_out, events, timeline, "analyze", color, progress)
        try:
            run_pipeline(progress.wrap(merge([i.events for i in opened])), runner, reporter)
        finally:
            progress.done()
            reporter.close()
    sys.exit(_finish(reporter, runner, [i.diag for i in opened], timeline, temporary, writers, fail_on))
