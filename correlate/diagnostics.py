"""Counting what a decoder skipped, so damage is reported instead of hidden."""
from __future__ import annotations

import sys
from collections import Counter


class Diagnostics:
    """Per-input tally of skipped or damaged data, with the first place each reason occurred."""

    def __init__(self, source: str):
        self.source = source
        self.counts: Counter[str] = Counter()
        self.first_where: dict[str, str] = {}
        self.fatal: str | None = None   # set when the input ended early on damage

    def skip(self, reason: str, where: str = "", n: int = 1) -> None:
        """Count `n` of something skipped (packets, bytes: the reason says which)."""
        self.counts[reason] += n
        self.first_where.setdefault(reason, where)

    def stop(self, message: str) -> None:
        """The input cannot be read further; everything before is kept."""
        self.fatal = message

    def summary_lines(self) -> list[str]:
        lines = []
        for reason, n in self.counts.most_common():
            where = self.first_where.get(reason)
            lines.append(f"{self.source}: skipped {n} x {reason}" + (f" (first at {where})" if where else ""))
        if self.fatal:
            lines.append(f"{self.source}: {self.fatal}")
        return lines


def report_diagnostics(diags) -> bool:
    """Print every input's skips on stderr; True when some input ended early on damage."""
    from .text import safe_text     # reasons may quote the input: escape them
    for d in diags:
        for line in d.summary_lines():
            print(f"correlate: {safe_text(line, 2000)}", file=sys.stderr)
    return any(d.fatal for d in diags)
