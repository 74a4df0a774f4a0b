"""`correlate decode`: one readable line per RPC and TCP event of a capture."""
from __future__ import annotations

import sys

import click

from ..diagnostics import Diagnostics, report_diagnostics
from ..pipeline import Reporter, run_pipeline
from .decode import decode_capture, source_name


@click.command()
@click.argument("capture", metavar="FILE|-")
@click.option("--json", "json_out", is_flag=True, help="Print the event stream as JSON lines.")
def decode(capture, json_out):
    """Decode GlusterFS RPC and TCP events from a pcap/pcapng file or stdin (`-`).

    Gzip'd captures are read directly. From a pipe, events are printed as packets arrive.

    \b
    Examples:
      correlate decode tests/captures/atime-minus-one.pcap
      correlate decode --json capture.pcapng.gz | jq 'select(.procedure=="SETATTR")'
      tcpdump -i any -s 0 -U --immediate-mode -B 262144 -w - 'tcp portrange 24007-24100 or tcp portrange 49152-49251 or icmp' | correlate decode -
    """
    diag = Diagnostics(source_name(capture))
    reporter = Reporter(json_out=json_out, show_events=True, show_findings=False,
                        out=sys.stdout)
    if capture == "-" and not sys.stdout.isatty():
        sys.stdout.reconfigure(line_buffering=True)   # live input: a line as soon as it is decoded
    try:
        run_pipeline(decode_capture(capture, diag=diag), None, reporter)
    finally:
        reporter.close()
        report_diagnostics([diag])
    if diag.fatal:
        sys.exit(1)

