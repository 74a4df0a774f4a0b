"""The `correlate` command. Subcommands load lazily so `correlate decode` never imports bcc."""
from __future__ import annotations

import errno
import gc
import importlib
import sys

import click

from .. import __version__, exit_codes
from ..errors import CorrelateError

# command name -> "module:attribute"; each area of the code owns its commands.
COMMANDS = {
    "decode": "correlate.cli.decode:decode",
    "probe": "correlate.cli.probe:probe",
    "probes": "correlate.cli.probe:probes",
    "run": "correlate.cli.engine:run",
    "analyze": "correlate.cli.engine:analyze",
    "plugins": "correlate.cli.plugins:plugins_cmd",
    "detectors": "correlate.cli.plugins:detectors_cmd",
    "timeline": "correlate.cli.timeline:timeline",
    "profile": "correlate.cli.profile:profile",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        _tolerant_streams()
        try:
            result = super().invoke(ctx)
            sys.stdout.flush()          # a full device says so here, not at interpreter exit
            return result
        except CorrelateError as exc:
            from ..outputs.terminal import safe_text   # file names and quoted input: escaped
            click.echo(f"correlate: {safe_text(str(exc), 2000)}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            # Ctrl-C: the shell's code for it, not click's "Aborted!" and 1
            _silence_stdout()
            click.echo("correlate: interrupted", err=True)
            ctx.exit(exit_codes.INTERRUPTED)
        except BrokenPipeError:
            # Output piped into `head` and closed: not an error of ours.
            sys.stderr.close()
            ctx.exit(0)
        except OSError as exc:
            if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
                raise
            # stdout on a full device or a failing disk: one line, and no second try at exit
            _silence_stdout()
            click.echo(f"correlate: cannot write the output: {exc.strerror or exc}", err=True)
            ctx.exit(exit_codes.OUTPUT)


def _tolerant_streams() -> None:
    """Text from any input can hold characters the terminal's encoding lacks (LANG=C,
    PYTHONIOENCODING=ascii): write those escaped rather than fail."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):
                pass


# What a write to a full or failing device gives (files the commands name are handled by
# them, with the file's name: these have none, so they are stdout's)
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EIO}


def _silence_stdout() -> None:
    """Drop what stdout still buffers (the device refuses it) so exit does not retry."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _print_version(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from ..hotpath import describe
    click.echo(f"correlate, version {__version__}\n{describe()}")
    ctx.exit()


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=exit_codes.HELP)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and whether the hot path runs compiled or as pure Python.")
def main():
    """Put GlusterFS wire traffic and process probes on one timeline and diagnose problems.

    \b
    Examples:
      correlate decode capture.pcap
      tcpdump -i any -s 0 -U --immediate-mode -B 262144 -w - 'tcp portrange 24007-24100 or tcp portrange 49152-49251 or icmp' | correlate decode -
      tcpdump -i any -s 0 -U --immediate-mode -B 262144 -w - 'tcp portrange 24007-24100 or tcp portrange 49152-49251 or icmp' | correlate run --probe gfapi --pcap -
      correlate analyze capture.pcapng timeline.jsonl
      correlate profile capture.pcap
      correlate analyze --fail-on error capture.pcap || echo "found a problem"

    """
    # Events are dicts that live a while and hold no cycles: at CPython's default thresholds
    # the cyclic collector walked them 540 times per 100k packets (0.6 s of 3.7 s of analyze)
    gc.set_threshold(50_000, 20, 100)
