"""The files `correlate timeline` writes in the same pass as its terminal output: an
annotated pcapng, the HTML report, a Perfetto trace and plugins' formats. Each sink takes the
shown events one by one (`add`), names itself for errors (`describe`), leaves nothing half
written when the run fails (`abort`) and says where it wrote (`close`).
"""
from __future__ import annotations

import os

from ..errors import OutputError


class PcapngSink:
    """Collects findings; at the end annotates each capture input with them."""

    def __init__(self, out_path: str, captures: list[tuple[str, str]], aliases: dict[str, set[str]]):
        self.out_path, self.captures, self.aliases = out_path, captures, aliases
        self.findings: list[dict] = []

    def add(self, ev: dict) -> None:
        if ev.get("layer") == "finding" and ev.get("kind") in ("finding", "finding.update"):
            self.findings.append(ev)

    def describe(self) -> str:
        return f"annotated pcapng {self.out_path}"

    def close(self, echo) -> None:
        from ..outputs.pcapng_annotate import annotate_pcapng
        for path, source in self.captures:
            out = self.out_path
            if len(self.captures) > 1:
                stem, ext = os.path.splitext(self.out_path)
                out = f"{stem}-{os.path.splitext(source)[0]}{ext or '.pcapng'}"
            stats = annotate_pcapng(path, self.findings, out, source=source,
                                    also=self.aliases.get(source, ()))
            echo(f"correlate: {out}: {stats['packets']} packets, {stats['annotated']} annotated")


class HtmlSink:
    def __init__(self, out_path: str, title: str):
        from ..outputs.html import HtmlReport
        self.out_path, self.report = out_path, HtmlReport(out_path, title=title)
        self.add = self.report.add

    def describe(self) -> str:
        return f"HTML report {self.out_path}"

    def close(self, echo) -> None:
        counts = self.report.close()
        left = f", {counts['left_out']} left out" if counts["left_out"] else ""
        echo(f"correlate: HTML report written to {self.out_path} "
             f"({counts['events']} events, {counts['findings']} findings{left})")


class PerfettoSink:
    def __init__(self, out_path: str):
        from ..outputs.perfetto import PerfettoWriter
        self.out_path = out_path
        self.file = open(out_path, "w", encoding="utf-8")
        self.writer = PerfettoWriter(self.file)
        self.add = self.writer.add

    def describe(self) -> str:
        return f"Perfetto trace {self.out_path}"

    def abort(self) -> None:
        """The run ended on an error: no half-written trace is left behind."""
        self.file.close()
        os.unlink(self.out_path)

    def close(self, echo) -> None:
        self.writer.close()
        self.file.close()
        echo(f"correlate: Perfetto trace written to {self.out_path} ({self.writer.count} trace events)")


class PluginOutputsSink:
    """--output FORMAT=PATH: the shown events go to a temporary timeline that each plugin
    writer then reads (as for run and analyze)."""

    def __init__(self, writers):
        from ..engine.pipeline import TimelineWriter
        from .run_setup import timeline_path
        self.writers = writers
        _path, self.tmp = timeline_path(None, writers)
        self.timeline = TimelineWriter(self.tmp, command="timeline")
        self.add = self.timeline.write

    def describe(self) -> str:
        return "--output " + ", ".join(name for name, _w, _p in self.writers)

    def abort(self) -> None:
        self.timeline.close()
        os.unlink(self.tmp)

    def close(self, echo) -> None:
        from .run_setup import write_outputs
        self.timeline.close()
        try:
            if not write_outputs(self.writers, self.tmp):
                raise OutputError("see above")
        finally:
            os.unlink(self.tmp)
