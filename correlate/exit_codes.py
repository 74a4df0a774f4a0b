"""The exit codes of every command: a contract scripts and CI jobs can rely on.

Shown in `correlate --help` and docs/cli.md. When several apply, the first in this order
wins: an output that could not be written, then damaged input, then a failed part, then
findings, since each earlier one means the later ones cannot be trusted in full.
"""
from __future__ import annotations

OK = 0
FINDINGS = 1        # findings at or above --fail-on LEVEL (default: never)
INPUT = 2           # a usage error, or an input that could not be read or was cut
OUTPUT = 3          # an output (stdout, a file) could not be written
PART_FAILED = 4     # a detector, plugin or source failed: reported and disabled, the rest ran
INTERRUPTED = 130   # SIGINT (Ctrl-C), as a shell reports 128 + 2

HELP = """\b
Exit codes:
  0    success
  1    findings at or above --fail-on LEVEL (default: never)
  2    usage error, or an input that could not be read or was cut
       (what came before the damage is still reported)
  3    an output could not be written (stdout or a file)
  4    a detector, plugin or source failed (reported and disabled; the rest ran)
  130  interrupted (Ctrl-C); what was collected so far is written"""


def outcome(*, output_failed: bool = False, input_damaged: bool = False,
            part_failed: bool = False, findings: bool = False) -> int:
    """The one code for a run where several things may have gone wrong."""
    for happened, code in ((output_failed, OUTPUT), (input_damaged, INPUT),
                           (part_failed, PART_FAILED), (findings, FINDINGS)):
        if happened:
            return code
    return OK
