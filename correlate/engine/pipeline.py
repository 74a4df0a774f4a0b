"""Events -> detectors -> outputs: the stage shared by `run`, `analyze` and `decode`."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

from ..errors import open_output
from ..events import header_line, to_json
from ..outputs.fields import format_fields
from ..outputs.terminal import colorize, format_event, format_finding, safe_text, use_color

if TYPE_CHECKING:       # `decode` runs no detectors: it need not import their runtime
    from .detector_runner import DetectorRunner


class TimelineWriter:
    """The merged timeline as JSON Lines: a header line, then every event and finding.

    A path that cannot be opened stops the command before it starts (OutputError); a write
    that fails later (a full disk) is said once on stderr, naming the file, and ends this
    output only: the run goes on, and `failed` tells the exit code."""

    def __init__(self, path: str, **info):
        self.path = path
        self.failed: str | None = None
        self._f = open_output(path, "w", encoding="ascii")
        self.write(header_line(**info), raw=True)

    def write(self, ev, raw: bool = False) -> None:
        if self.failed:
            return
        try:
            self._f.write((ev if raw else to_json(ev)) + "\n")
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        try:
            self._f.close()        # flushes the last buffer: a full disk may say so here
        except OSError as exc:
            if not self.failed:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.failed = f"cannot write {self.path}: {exc.strerror or exc}"
        print(f"correlate: {safe_text(self.failed, 2000)}", file=sys.stderr)
        try:
            self._f.close()
        except OSError:
            pass               # what it still buffered cannot be written either


HELD_LINES = 256


class Reporter:
    """Writes events and findings where the user asked: terminal text or JSON lines on
    stdout, and the timeline file. Output is flushed per finding so a live run shows it at
    once. Event lines for an output that is not line-buffered (a file, a pipe from a capture
    file) are written HELD_LINES at a time: one write per line is a tenth of decode's time."""

    def __init__(self, *, json_out: bool = False, show_events: bool = False,
                 show_findings: bool = True, timeline: TimelineWriter | None = None,
                 out: TextIO | None = None, color: bool | None = None,
                 fields: list[tuple[str, ...]] | None = None, progress=None):
        self.out = out or sys.stdout
        self.json_out = json_out
        self.fields = fields          # events as these tab-separated fields (outputs.fields)
        self.show_events = show_events
        self.show_findings = show_findings
        self.timeline = timeline
        self.color = use_color("auto", self.out) if color is None else color
        self.progress = progress      # a terminal counter to wipe before a line is printed
        self.counts = {"events": 0, "findings": 0}
        self.severities: set = set()  # of the findings shown (for --fail-on)
        self._held: list[str] | None = None if getattr(self.out, "line_buffering", True) else []

    def event(self, ev: dict) -> None:
        self.counts["events"] += 1
        if self.timeline:
            self.timeline.write(ev)
        if self.show_events:
            if self.fields is not None:
                line = format_fields(ev, self.fields)
            elif self.json_out:       # the text line is only built when it is printed
                line = to_json(ev)
            else:
                line = colorize(format_event(ev), ev, self.color)
            held = self._held
            if held is None:
                self.out.write(line + "\n")
            else:
                held.append(line)
                if len(held) >= HELD_LINES:
                    self._write_held()

    def _write_held(self) -> None:
        if self._held:
            self._held.append("")
            self.out.write("\n".join(self._held))
            self._held.clear()

    def finding(self, f: dict) -> None:
        kind = f.get("kind")
        if kind == "finding":
            self.counts["findings"] += 1
        if kind in ("finding", "finding.update"):   # an update may raise the severity
            self.severities.add(f.get("severity"))
        if self.timeline:
            self.timeline.write(f)
        # In text the suppressed count is said on stderr; JSON keeps it as an event.
        if self.show_findings and (self.json_out or f.get("kind") != "finding.suppressed"):
            if self.progress is not None:
                self.progress.clear()
            self._write_held()
            self._print(f, format_finding(f) if f.get("kind", "").startswith("finding")
                        else format_event(f))
            self.out.flush()

    def _print(self, ev: dict, text: str) -> None:
        if self.json_out:
            self.out.write(to_json(ev) + "\n")
        else:
            self.out.write(colorize(text, ev, self.color) + "\n")

    def close(self) -> None:
        self._write_held()
        self.out.flush()
        if self.timeline:
            self.timeline.close()


def run_pipeline(events: Iterable[dict], runner: DetectorRunner | None, reporter: Reporter) -> None:
    """Every event to the reporter, then through the detectors; findings right after the event
    that completed them."""
    for ev in events:
        if runner is not None and ev.get("layer") == "finding":
            continue    # a saved timeline's findings: the detectors derive them again
        reporter.event(ev)
        if runner is None:
            continue
        for f in runner.observe(ev):
            reporter.finding(f)
    if runner is not None:
        for f in runner.finish():
            reporter.finding(f)
