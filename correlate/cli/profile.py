"""`correlate profile`: a volume profile (per brick and procedure) from captures or timelines."""
from __future__ import annotations

import itertools
import json
import sys
import time

import click

from .. import exit_codes
from ..diagnostics import report_diagnostics
from ..outputs.profile_text import format_profile
from ..profile import Profile
from .keylog import keylog_option, open_keylog
from .parallel import decode_stdin_apart, parallel_for, parallel_options, stdin_in_process
from .run_setup import topology_option
from ..state.topology import Topology
from ..sources import open_input



def seeded(volumes) -> Topology:
    """A Topology that knows the volumes --topology gave before any event."""
    topology = Topology()
    topology.seed(volumes)
    return topology


@click.command()
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--per-client", is_flag=True,
              help="Split each brick's rows by client process (SETVOLUME process-uuid, else "
                   "address and credential pid).")
@click.option("--json", "json_out", is_flag=True, help="Print the profile as one JSON object.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Also write an HTML page: latency per brick and procedure, and charts over "
                   "time (per brick, replica peers, lock waits and holds).")
@topology_option
@keylog_option
@parallel_options
def profile(inputs, per_client, json_out, html_path, topology, tls_keylog, jobs, scheduler):
    """Per brick and procedure: calls, errors by errno, latency p50/p90/p99/max, bytes read
    and written, calls in flight at most; like `gluster volume profile VOL info`, but from a
    capture, without access to the servers and without starting anything beforehand.

    Latency is call to reply as the capture saw it (on the client: network plus brick).
    Percentiles come from bounded sketches (1% relative error): memory stays flat however long
    the capture. For a live profile use `correlate run --profile-every SECONDS`.

    \b
    Examples:
      correlate profile tests/captures/slow-brick.pcap
      correlate profile --per-client client1.pcap client2.pcap
      correlate profile --json capture.pcapng | jq '.bricks[] | {server, brick}'
      correlate profile saved-timeline.jsonl --html profile.html
      correlate profile late-start.pcap --topology volinfo-and-status.xml
      correlate profile --tls-keylog keys.log tls-volume.pcap
      correlate profile --jobs 2 big-capture.pcap    # decoded in two other processes
      tcpdump -r big-capture.pcap -w - | correlate profile --jobs 2 -
    """
    # the lock lanes of the charts read the lock calls' arguments: decode them all then
    decoding = {} if html_path else {"details": Profile.DETAILS, "details_later": True}
    keylog = open_keylog(tls_keylog)
    if keylog is not None:
        decoding["keylog"] = keylog
    prof = Profile(per_client=per_client, topology=seeded(topology))
    charts = None
    if html_path:
        from ..outputs.chart_data import ChartData
        charts = ChartData(prof.topology)     # bounded: buckets, not the latencies
    # With --jobs, captures are decoded in N other processes and stdin in one of its own;
    # the events are the same. Unlike analyze, this process does not count as one of the N:
    # profiling is light (a fifth of an event's cost), and one decoding process beside it
    # (decoding, then sending) took as long as this process alone on two cores.
    with parallel_for(inputs, jobs, scheduler) as parallel:
        opened = [stdin_in_process(dict(decoding))
                  if path == "-" and jobs != 1 and decode_stdin_apart() else
                  open_input(path, parallel=parallel, **decoding) for path in inputs]
        # Inputs one after the other, not merged by time: the profile does not depend on the
        # order across inputs, and a time merge would hold its reorder window of events.
        for ev in itertools.chain.from_iterable(i.events for i in opened):
            prof.observe(ev)
            if charts is not None:
                charts.observe(ev)
    snap = prof.snapshot()
    if json_out:
        click.echo(json.dumps(snap, ensure_ascii=True))
    else:
        click.echo(format_profile(snap))
    output_failed = False
    if html_path:
        from ..outputs.profile_html import write_profile_page
        try:
            write_profile_page(snap, html_path, "correlate profile: " + ", ".join(i.name for i in opened),
                               charts=charts)
            click.echo(f"correlate: profile page written to {html_path}", err=True)
        except OSError as exc:      # the text profile is out; the page's failure is one line
            click.echo(f"correlate: cannot write {html_path}: {exc.strerror or exc}", err=True)
            output_failed = True
    fatal = report_diagnostics([i.diag for i in opened if i.diag is not None])
    sys.exit(exit_codes.outcome(output_failed=output_failed, input_damaged=fatal))


class PeriodicProfile:
    """For `run --profile-every`: feeds a Profile and prints it every `every_s` seconds of
    wall time (checked as events pass), and once more at the end."""

    def __init__(self, every_s: float, json_out: bool, out=None, topology=()):
        self.profile = Profile(topology=seeded(topology))
        self.every_s = every_s
        self.json_out = json_out
        self.out = out or sys.stdout
        self.next_at = time.monotonic() + every_s

    def events(self, events):
        for ev in events:
            self.profile.observe(ev)
            yield ev
            if time.monotonic() >= self.next_at:
                self.print()
                self.next_at = time.monotonic() + self.every_s

    def print(self) -> None:
        snap = self.profile.snapshot()
        text = json.dumps(snap, ensure_ascii=True) if self.json_out else format_profile(snap) + "\n"
        self.out.write(text + "\n")
        self.out.flush()
