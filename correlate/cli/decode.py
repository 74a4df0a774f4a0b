"""`correlate decode`: one readable line per RPC and TCP event of a capture."""
from __future__ import annotations

import sys

import click

from .. import exit_codes
from ..diagnostics import Diagnostics, report_diagnostics
from .completion import complete_fields
from ..outputs.fields import needs_details, parse_fields
from ..outputs.terminal import color_option, use_color
from .keylog import keylog_option, open_keylog
from .parallel import parallel_for, parallel_options
from ..engine.pipeline import Reporter, run_pipeline
from ..wire.decode import decode_capture, source_name


@click.command()
@click.argument("capture", metavar="FILE|-")
@click.option("--json", "json_out", is_flag=True, help="Print the event stream as JSON lines.")
@click.option("--fields", "fields_spec", metavar="F1,F2,...", shell_complete=complete_fields,
              help="Print these event fields, tab-separated, one line per event (like tshark "
                   "-T fields). Dotted names reach into args/result/cred. Credentials, args "
                   "and results are only decoded when a field needs them: the fastest output. "
                   "An unknown name is refused, with the list of valid ones.")
@color_option
@parallel_options
@keylog_option
def decode(capture, json_out, fields_spec, color, jobs, scheduler, tls_keylog):
    """Decode GlusterFS RPC and TCP events from a pcap/pcapng file or stdin (`-`).

    Gzip'd captures are read directly. From a pipe, events are printed as packets arrive.

    \b
    Examples:
      correlate decode tests/captures/atime-minus-one.pcap
      correlate decode --json capture.pcapng.gz | jq 'select(.procedure=="SETATTR")'
      correlate decode --fields time_ns,conn,xid,procedure,latency_ns capture.pcap
      correlate decode --fields kind,procedure,args.path,args.atime,op_errno capture.pcap
      correlate decode --jobs 2 --json big-capture.pcap > events.jsonl
      correlate decode --scheduler tcp://scheduler-host:8786 /shared/captures/big.pcap
      correlate decode --tls-keylog keys.log tls-volume.pcap
      tcpdump -i any -s 0 -U --immediate-mode -B 262144 -w - 'tcp portrange 24007-24100 or tcp portrange 49152-49251 or icmp' | correlate decode -
    """
    fields = None
    if fields_spec is not None:
        if json_out:
            raise click.UsageError("--fields and --json are two output formats: choose one")
        try:
            fields = parse_fields(fields_spec)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--fields")
    diag = Diagnostics(source_name(capture))
    if capture == "-" and not sys.stdout.isatty():
        # live input: a line as soon as it is decoded (the Reporter then holds none back)
        sys.stdout.reconfigure(line_buffering=True)
    reporter = Reporter(json_out=json_out, show_events=True, show_findings=False,
                        out=sys.stdout, fields=fields, color=use_color(color, sys.stdout))
    details = fields is None or needs_details(fields)
    keylog = open_keylog(tls_keylog)
    try:
        with parallel_for([capture], jobs, scheduler) as parallel:
            if parallel is None or capture == "-":
                events = decode_capture(capture, diag=diag, details=details, keylog=keylog)
            else:
                events = parallel.decode(capture, diag.source, diag, details=details,
                                         keylog=keylog)
            run_pipeline(events, None, reporter)
    finally:
        reporter.close()
        report_diagnostics([diag])
    if diag.fatal:
        sys.exit(exit_codes.INPUT)

