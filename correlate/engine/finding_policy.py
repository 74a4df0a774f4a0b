"""The user's policy over detectors, kept apart from them (as Zeek's notice policy is): which
detectors run, and which of their findings are suppressed.

Command line: --detector NAME (run only these), --no-detector NAME, -o NAME.enabled=false,
--suppress DETECTOR[:FIELD=GLOB[,FIELD=GLOB...]]. Config file: a [detectors] table with
`enable` / `disable` lists, and [[suppress]] tables (`detector` plus FIELD = GLOB lines).
A suppressed finding is counted, never silently lost: one line on stderr and a
`finding.suppressed` event at the end of the timeline say how many, by which rule.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..events import make_event

ANY = "*"                                   # --suppress '*:brick=...': every detector
POLICY_TABLES = ("detectors", "suppress")   # config tables that are not a detector's options
SPEC_FORM = "DETECTOR[:FIELD=GLOB[,FIELD=GLOB...]]"


def _matches(value, pattern: str) -> bool:
    """A finding's field against a glob: text as is, numbers as written, a list by any item."""
    if isinstance(value, (list, tuple)):
        return any(_matches(v, pattern) for v in value)
    if value is None or isinstance(value, dict):
        return False
    if isinstance(value, bool):
        value = "true" if value else "false"
    return fnmatchcase(str(value), pattern)


@dataclass(frozen=True)
class Rule:
    """Suppress the findings of `detector` (or of any, `*`) whose own top-level fields match
    every (name, glob) in `fields`."""
    detector: str
    fields: tuple[tuple[str, str], ...] = ()

    def matches(self, finding: dict) -> bool:
        if self.detector != ANY and finding.get("detector") != self.detector:
            return False
        return all(_matches(finding.get(name), glob) for name, glob in self.fields)

    def describe(self) -> str:
        return ",".join(f"{name}={glob}" for name, glob in self.fields)


def _field(name, value, where: str) -> tuple[str, str]:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{where}: {name!r} is not a finding field name (e.g. brick, volume, "
                         "client, path, gfid)")
    if isinstance(value, bool):
        value = "true" if value else "false"
    if not isinstance(value, (str, int, float)) or value == "":
        raise ValueError(f"{where}: {name} needs a value or a glob, e.g. {name}=*")
    return name, str(value)


def parse_rule(spec: str) -> Rule:
    """`stale-handle`, `stale-handle:brick=127.0.0.2:/srv/b1`, `rpc-unanswered:volume=vol1,
    path=/dir/*`. Only the first ':' ends the detector (bricks hold one); a piece without '='
    continues the value before it (a path with a comma)."""
    detector, _sep, rest = spec.partition(":")
    detector = detector.strip()
    if not detector:
        raise ValueError(f"{spec!r}: expected {SPEC_FORM}")
    fields: list[list[str]] = []
    for piece in rest.split(",") if rest else ():
        name, eq, value = piece.partition("=")
        if not eq:
            if not fields:
                raise ValueError(f"{spec!r}: expected {SPEC_FORM}")
            fields[-1][1] += "," + piece
            continue
        fields.append([name.strip(), value])
    return Rule(detector, tuple(_field(n, v, repr(spec)) for n, v in fields))


def rule_from_table(table, where: str) -> Rule:
    """A [[suppress]] table: `detector = "stale-handle"` and FIELD = "GLOB" lines."""
    if not isinstance(table, dict) or not isinstance(table.get("detector"), str) \
            or not table["detector"].strip():
        raise ValueError(f"{where}: each [[suppress]] needs detector = \"NAME\" "
                         "(then FIELD = \"GLOB\" lines)")
    fields = tuple(_field(k, v, where) for k, v in table.items() if k != "detector")
    return Rule(table["detector"].strip(), fields)


def _names(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: expected a list of detector names, e.g. [\"stale-handle\"]")
    return value


def from_config(table: dict, where: str) -> tuple[list[str] | None, list[str], list[Rule]]:
    """([detectors] enable or None, [detectors] disable, [[suppress]] rules) of a config file."""
    section = table.get("detectors", {})
    if not isinstance(section, dict):
        raise ValueError(f"{where}: [detectors] must be a table (enable = [...], disable = [...])")
    unknown = sorted(set(section) - {"enable", "disable"})
    if unknown:
        raise ValueError(f"{where}: [detectors] has no key {unknown[0]!r}; keys: enable, disable")
    only = _names(section["enable"], f"{where}: [detectors] enable") if "enable" in section else None
    off = _names(section.get("disable", []), f"{where}: [detectors] disable")
    rules = table.get("suppress", [])
    if not isinstance(rules, list):
        raise ValueError(f"{where}: write suppression rules as [[suppress]] tables")
    return only, off, [rule_from_table(t, f"{where}: [[suppress]] #{i}") for i, t in enumerate(rules, 1)]


class FindingPolicy:
    """Which detectors run (`select`) and which findings are suppressed (`suppress`, asked by
    the runner for each new finding before it is shown)."""

    def __init__(self, only: Iterable[str] | None = None, disabled: Iterable[str] = (),
                 rules: Iterable[Rule] = ()):
        self.only = None if only is None else frozenset(only)
        self.disabled = frozenset(disabled)
        self.rules = list(rules)
        self.counts = [0] * len(self.rules)        # findings suppressed, per rule
        self._keys: set = set()                    # fold keys suppressed: their repeats too
        self.plugin_of: dict[str, str] = {}        # detector id -> plugin (see bind)

    def disabling(self, more: Iterable[str]) -> FindingPolicy:
        """The same policy with more detectors off (-o NAME.enabled=false)."""
        policy = FindingPolicy(self.only, self.disabled | set(more), self.rules)
        policy.plugin_of = self.plugin_of
        return policy

    def bind(self, plugin_of: dict[str, str]) -> None:
        """Check every name against the detectors loaded ({id: plugin}): ValueError names the
        first unknown one and lists the known ids."""
        self.plugin_of = dict(plugin_of)
        names = [*(self.only or ()), *self.disabled, *(r.detector for r in self.rules)]
        for name in names:
            if name != ANY and name not in plugin_of:
                known = ", ".join(sorted(plugin_of)) or "none"
                raise ValueError(f"no detector {name!r}; detectors: {known}")

    def runs(self, det_id) -> bool:
        return (self.only is None or det_id in self.only) and det_id not in self.disabled

    def select(self, detectors: list) -> list:
        return [d for d in detectors if self.runs(getattr(d, "id", None))]

    def idle_plugins(self) -> set[str]:
        """Plugins whose every detector is off: their probe points are not requested."""
        plugins = set(self.plugin_of.values())
        return plugins - {p for d, p in self.plugin_of.items() if self.runs(d)}

    def suppress(self, key, finding: dict) -> bool:
        """True when this new finding (fold key `key`) is suppressed; counted by rule."""
        if key in self._keys:
            return True
        for i, rule in enumerate(self.rules):
            if rule.matches(finding):
                self.counts[i] += 1
                self._keys.add(key)
                return True
        return False

    @property
    def suppressed(self) -> int:
        return sum(self.counts)

    def _by_rule(self) -> list[tuple[Rule, int]]:
        return [(r, n) for r, n in zip(self.rules, self.counts) if n]

    def summary(self) -> str | None:
        """`suppressed 12 findings: stale-handle x12 (brick=127.0.0.2:/srv/b1)`, or None."""
        if not self.suppressed:
            return None
        parts = [f"{r.detector} x{n}" + (f" ({r.describe()})" if r.fields else "")
                 for r, n in self._by_rule()]
        noun = "finding" if self.suppressed == 1 else "findings"
        return f"suppressed {self.suppressed} {noun}: " + ", ".join(parts)

    def summary_event(self, time_ns: int) -> dict | None:
        """The count as an event at the end of the timeline and of --json output."""
        if not self.suppressed:
            return None
        return make_event(time_ns, "finding", "finding.suppressed", "finding-policy",
                          detector="finding-policy", severity="info", title=self.summary(),
                          count=self.suppressed,
                          rules=[{"detector": r.detector, "fields": dict(r.fields), "count": n}
                                 for r, n in self._by_rule()])
