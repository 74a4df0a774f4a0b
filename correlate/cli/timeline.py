"""`correlate timeline`: merge inputs from one or more hosts, filter, and render.

Inputs are whatever `correlate.sources.open_input` recognises (captures, saved timelines,
Gluster logs). Renderings: terminal lines (default) or a ladder, JSON Lines, an HTML
report, a Perfetto trace and an annotated pcapng; several at once from one pass.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator

import click

from .. import exit_codes
from ..diagnostics import report_diagnostics
from ..errors import CorrelateError
from ..events import header_line, to_json
from ..engine.merge import DEFAULT_WINDOW_NS, merge, shift_clock
from ..outputs.terminal import color_option
from .run_setup import (detector_options, fail_on_option, output_writers, parse_detector_options, parse_policy,
                        reaches, selection_options, topology_option)
from .keylog import keylog_option, open_keylog
from .parallel import parallel_for, parallel_options
from .timeline_filter import EventFilter, parse_time
from .timeline_sinks import HtmlSink, PcapngSink, PerfettoSink, PluginOutputsSink


# -- clock synchronisation between hosts ----------------------------------------------------

def estimate_host_offsets(host_inputs: dict[str, list[str]], reference: str, echo) -> dict[str, int]:
    """Offset to add to each host's times to put it on the reference host's clock."""
    from ..sources.clocksync import RpcTimes, estimate_offset
    from ..sources import open_input

    def wire_events(paths: list[str], host: str) -> Iterator[dict]:
        for path in paths:
            inp = open_input(path, host=host)
            if inp.kind in ("capture", "timeline"):
                yield from (e for e in inp.events if e.get("kind") in ("rpc.call", "rpc.reply"))

    # The reference is indexed once; each other host's captures stream past it.
    reference_times = RpcTimes(wire_events(host_inputs[reference], reference))
    offsets = {reference: 0}
    for host, paths in host_inputs.items():
        if host == reference:
            continue
        est = estimate_offset(wire_events(paths, host), reference_times)
        if est is None:
            echo(f"correlate: no RPC seen both on {reference} and on {host}: clock of {host} not adjusted")
            offsets[host] = 0
            continue
        est = est.inverted()        # host's clock minus the reference's
        echo(f"correlate: {est.describe(reference, host)}; shifting {host} by {-est.offset_ns / 1e9:+.6f} s")
        offsets[host] = -est.offset_ns
    return offsets


# -- a saved timeline together with the capture it was made from ----------------------------

_WIRE_IDENTITY = ("time_ns", "kind", "conn", "xid", "frame", "src", "dst")


class CaptureDeduplicator:
    """Drops the second copy of each wire event when a saved timeline is merged with the
    capture it was made from (`correlate timeline incident.jsonl incident.pcap`).

    The timeline's copy is kept: its findings point at it. Copies have the same time, so
    only events of one timestamp are held at a time. `aliases` maps each capture's name to
    the source names its events had in the timeline (`stdin` for `run --pcap -`), so the
    annotated pcapng finds the packets the timeline's findings point at."""

    def __init__(self, capture_names: set[str]):
        self.capture_names = capture_names
        self.aliases: dict[str, set[str]] = {}
        self.dropped = 0

    def __call__(self, events: Iterable[dict]) -> Iterator[dict]:
        group: list[dict] = []
        for ev in events:
            if group and ev.get("time_ns") != group[0].get("time_ns"):
                yield from self._unique(group)
                group = []
            group.append(ev)
        yield from self._unique(group)

    def _unique(self, group: list[dict]) -> list[dict]:
        if len(group) == 1:
            return group
        timeline_copies = {tuple(ev.get(k) for k in _WIRE_IDENTITY): ev.get("source") for ev in group
                           if ev.get("layer") == "wire" and ev.get("source") not in self.capture_names}
        out, seen = [], set()
        for ev in group:
            if ev.get("layer") != "wire":
                out.append(ev)
                continue
            key = tuple(ev.get(k) for k in _WIRE_IDENTITY)
            original = timeline_copies.get(key)
            if (key, ev.get("source")) in seen or (ev.get("source") in self.capture_names
                                                   and original is not None):
                self.dropped += 1
                if original is not None:
                    self.aliases.setdefault(ev.get("source"), set()).add(original)
                continue
            seen.add((key, ev.get("source")))
            out.append(ev)
        return out


# -- outputs --------------------------------------------------------------------------------


def _with_findings(events: Iterable[dict], detect: bool, options: dict, policy,
                   part_failed: list, topology=()) -> Iterator[dict]:
    """Run the detectors (plugins included, each new finding passed to correlate_finding) and
    put each finding after the event completing it; a failed detector or plugin is named in
    `part_failed` (for the exit code)."""
    if not detect:
        yield from events
        return
    from .run_setup import make_runner
    runner = make_runner({}, options, policy, topology)
    for ev in events:
        if ev.get("layer") == "finding":
            continue        # a saved timeline's findings: the detectors derive them again
        yield ev
        yield from runner.observe(ev)
    yield from runner.finish()
    part_failed.extend([*runner.disabled, *runner.plugin_failures])
    from ..outputs.terminal import safe_text
    for line in [*runner.drop_lines(), runner.policy.summary()]:
        if line:
            click.echo(f"correlate: {safe_text(line, 2000)}", err=True)


@click.command()
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option("--host", "hosts", multiple=True, metavar="NAME=INPUT",
              help="An input recorded on host NAME (repeatable; also counts as an INPUT).")
@click.option("--since", metavar="TIME", help="Only events at or after TIME (ISO 8601, Unix s, or +DURATION).")
@click.option("--until", metavar="TIME", help="Only events at or before TIME.")
@click.option("--conn", metavar="N|IP:PORT", help="Only connection N, or traffic of endpoint IP:PORT.")
@click.option("--host-filter", metavar="NAME", help="Only events of host NAME.")
@click.option("--gfid", metavar="GFID", help="Only events about this GFID (a prefix is enough).")
@click.option("--path", metavar="PATH",
              help="Only events about file PATH: a full path (/dir/f) or a basename (f); calls "
                   "by the gfid or fd the capture bound to it are followed.")
@click.option("--pid", type=int, help="Only events of process PID (probes, RPC credentials).")
@click.option("--layer", "layers", multiple=True, type=click.Choice(["wire", "probe", "log", "finding"]),
              help="Only these layers (repeatable).")
@click.option("--ladder", is_flag=True, help="Draw a ladder diagram instead of one line per event.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Write an HTML report.")
@click.option("--perfetto", "perfetto_path", type=click.Path(dir_okay=False),
              help="Write a Perfetto / Chrome trace (open in ui.perfetto.dev).")
@click.option("--pcapng", "pcapng_path", type=click.Path(dir_okay=False),
              help="Write the capture input(s) as pcapng with findings as packet comments.")
@click.option("--json", "json_out", is_flag=True, help="JSON Lines on stdout (a header line, then events).")
@click.option("--sync-clocks", is_flag=True,
              help="Estimate each host's clock offset from RPCs captured at both ends and apply it.")
@click.option("--detect/--no-detect", default=None,
              help="Run the detectors [default: on, unless an input is a saved timeline].")
@click.option("--window-ms", type=int, default=DEFAULT_WINDOW_NS // 1_000_000, show_default=True,
              help="Reorder window of the merge.")
@click.option("--output", "outputs", multiple=True, metavar="FORMAT=PATH",
              help="Also write the shown events in a format a plugin adds (correlate_outputs "
                   "hook; see `correlate plugins`). Repeatable.")
@color_option
@detector_options
@selection_options
@fail_on_option
@topology_option
@parallel_options
@keylog_option
def timeline(inputs, hosts, since, until, conn, host_filter, gfid, path, pid, layers, ladder,
             html_path, perfetto_path, pcapng_path, json_out, sync_clocks, detect, window_ms, outputs,
             color, option_specs, config_path, only_detectors, skip_detectors, suppress_specs,
             fail_on, topology, jobs, scheduler, tls_keylog):
    """Merge captures, saved timelines and Gluster logs into one timeline; filter; render.

    \b
    Examples:
      correlate timeline tests/captures/auth-rejected.pcap --ladder
      correlate timeline client.pcap /var/log/glusterfs/bricks/b1.log --html report.html
      correlate timeline --host client=c.pcap --host server=s.pcap --sync-clocks --ladder
      correlate timeline saved.jsonl --layer finding --layer probe --since +2s --until +5s
      correlate timeline atime.pcap --pcapng annotated.pcapng --perfetto trace.json
      correlate timeline incident.jsonl incident.pcap --html report.html --pcapng annotated.pcapng
      correlate timeline capture.pcap --conn 127.0.0.2:49152 --json | jq .procedure
      correlate timeline tests/captures/lock-wait.pcap --path /lock-wait
      correlate timeline capture.pcap --output perfetto=trace.json -o rpc-unanswered.after_s=2
      correlate timeline --jobs 2 --json client.pcap server.pcap > merged.jsonl
      correlate timeline capture.pcap --html r.html --no-detector slow-brick --suppress lock-wait
    """
    from ..sources import open_input

    specs: list[tuple[str, str | None]] = [(p, None) for p in inputs]
    for h in hosts:
        name, sep, p = h.partition("=")
        if not sep or not name or not p:
            raise click.BadParameter(f"{h!r}: expected NAME=INPUT", param_hint="--host")
        specs.append((p, name))
    if not specs:
        raise click.UsageError("no INPUT given")
    options = parse_detector_options(option_specs, config_path)
    policy = parse_policy(config_path, only_detectors, skip_detectors, suppress_specs)
    writers = output_writers(outputs)
    since_t = parse_time(since) if since else None
    until_t = parse_time(until) if until else None

    def echo(msg: str) -> None:
        click.echo(msg, err=True)

    offsets: dict[str, int] = {}
    if sync_clocks:
        host_inputs: dict[str, list[str]] = {}
        for p, h in specs:
            if h is not None:
                if p == "-":
                    raise click.UsageError("--sync-clocks reads inputs twice: stdin cannot be one")
                host_inputs.setdefault(h, []).append(p)
        if len(host_inputs) < 2:
            raise click.UsageError("--sync-clocks needs inputs from two hosts or more (--host NAME=INPUT)")
        offsets = estimate_host_offsets(host_inputs, next(iter(host_inputs)), echo)

    with parallel_for([p for p, _h in specs], jobs, scheduler, detecting=detect is not False) as parallel:
        keylog = open_keylog(tls_keylog)
        opened = [open_input(p, host=h, parallel=parallel, keylog=keylog) for p, h in specs]
        if detect is None:
            detect = not any(i.kind == "timeline" for i in opened)
        streams = [shift_clock(i.events, offsets.get(h, 0)) if h else i.events
                   for i, (_p, h) in zip(opened, specs)]
        merged = merge(streams, window_ms * 1_000_000)
        dedup = None
        if any(i.kind == "timeline" for i in opened) and any(i.kind == "capture" for i in opened):
            dedup = CaptureDeduplicator({i.name for i in opened if i.kind == "capture"})
            merged = dedup(merged)
        part_failed: list[str] = []
        events = _with_findings(merged, detect, options, policy, part_failed, topology)
        keep = EventFilter(since=since_t, until=until_t, conn=conn, host=host_filter, gfid=gfid, path=path,
                           pid=pid, layers=layers)

        failed = input_failed = False
        sinks = []
        if pcapng_path:
            captures = [(p, i.name) for i, (p, _h) in zip(opened, specs) if i.kind == "capture" and p != "-"]
            if captures:
                sinks.append(PcapngSink(pcapng_path, captures, dedup.aliases if dedup else {}))
            else:    # the other outputs are still written
                echo("correlate: --pcapng: no capture file among the inputs (a timeline holds events, "
                     "not packets); name the capture as well: correlate timeline incident.jsonl "
                     "incident.pcap --pcapng annotated.pcapng")
                input_failed = True     # the inputs cannot give it: a usage error (2), not a write error
        if html_path:
            sinks.append(HtmlSink(html_path, "correlate timeline: " + ", ".join(i.name for i in opened)))
        if perfetto_path:
            try:
                sinks.append(PerfettoSink(perfetto_path))
            except OSError as exc:
                echo(f"correlate: Perfetto trace {perfetto_path} failed: {exc}")
                failed = True
        if writers:
            sinks.append(PluginOutputsSink(writers))

        out = sys.stdout
        to_terminal = not json_out and not (html_path or perfetto_path or pcapng_path or writers) or ladder
        if json_out:
            out.write(header_line(command="timeline", inputs=[i.name for i in opened]) + "\n")
        ladder_view = None
        if ladder and not json_out:
            from ..outputs.ladder import Ladder
            ladder_view = Ladder()
        from ..outputs.terminal import format_event, format_finding
        from ..outputs.terminal import Progress, colorize, use_color
        progress = Progress()
        color = use_color(color, out)
        shown = 0
        severities = set()      # of the findings shown, for --fail-on
        try:
            for ev in events:
                progress.tick(ev)
                if not keep(ev):
                    continue
                shown += 1
                if ev.get("kind") in ("finding", "finding.update"):
                    severities.add(ev.get("severity"))
                for sink in list(sinks):
                    try:
                        sink.add(ev)
                    except OSError as exc:       # a full disk ends this output, not the others
                        echo(f"correlate: {sink.describe()} failed: {exc}")
                        sinks.remove(sink)
                        failed = True
                if json_out:
                    out.write(to_json(ev) + "\n")
                elif ladder_view is not None:
                    progress.clear()
                    for line in ladder_view.add(ev):
                        out.write(line + "\n")
                elif to_terminal:
                    progress.clear()
                    text = format_finding(ev) if ev.get("kind") == "finding" else format_event(ev)
                    out.write(colorize(text, ev, color) + "\n")
        except BaseException:
            for sink in sinks:
                getattr(sink, "abort", lambda: None)()
            raise
        finally:
            progress.done()
            out.flush()
        for sink in sinks:
            try:
                sink.close(echo)
            except (OSError, CorrelateError) as exc:     # one failing output does not cancel the others
                echo(f"correlate: {sink.describe()} failed: {exc}")
                # the input it re-reads was damaged (the annotated pcapng): an input's fault
                unreadable = getattr(exc, "exit_code", None) == exit_codes.INPUT
                input_failed |= unreadable
                failed |= not unreadable
        fatal = report_diagnostics([i.diag for i in opened if i.diag is not None]) or input_failed
        if dedup is not None and dedup.dropped:
            echo(f"correlate: {dedup.dropped} wire events were both in a saved timeline and in a "
                 "capture: kept once")
        if to_terminal or json_out:
            echo(f"correlate: {shown} events shown")
        else:
            echo(f"correlate: {shown} events passed the filters into the outputs")
        sys.exit(exit_codes.outcome(
            output_failed=failed, input_damaged=fatal, part_failed=bool(part_failed),
            findings=any(reaches(s, fail_on.lower()) for s in severities)))
