"""Detectors: what a plugin subclasses and declares (Detector, Wants, Option), and loading
and configuring them. The runtime that feeds them events is correlate/engine/detector_runner.py.

A detector is any object with an `id`, `observe(event) -> iterable of findings` and
`finish() -> iterable of findings`, and optionally `wants` (a `Wants`: the events it needs).
Subclass `Detector` for the helpers. Findings are event dicts (layer "finding"); make them
with `Detector.finding(...)`.
"""
from __future__ import annotations

import math

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .events import make_event, with_details

SEVERITIES = ("info", "warning", "error", "critical")

# Keys left out of a finding's evidence. The credential stays: `timeline --pid` finds a
# finding by the process its calls came from.
_EVIDENCE_DROP: frozenset[str] = frozenset()


def evidence_of(ev: dict) -> dict:
    """An event as evidence: every detail decoded (even those no detector asked for), the
    credential left out."""
    return {k: v for k, v in with_details(ev).items() if k not in _EVIDENCE_DROP}


def _names(value) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, str):      # Wants(kinds="rpc.call") would mean its characters
        raise TypeError(f"expected a collection of names, not the string {value!r}")
    return frozenset(value)


@dataclass(frozen=True, slots=True)
class Wants:
    """What a detector needs, declared as its class attribute `wants`. None means all.

    An event reaches the detector when its kind is in `kinds` or its layer in `layers`
    (when both are None: every event), and, for RPC events (kinds `rpc.*`), its program is
    in `programs` and its procedure in `procedures`. `details` names the procedures whose
    decoded credentials (`cred`), arguments (`args`) and results (`result`) the detector
    reads; for the others the decoder may leave those keys out (op_ret, op_errno and
    errno_name are always there). `failures=True` also lets through every failed reply of
    the programs wanted, whatever its procedure (op_ret -1, or refused by the RPC layer:
    denied, or accepted with a status other than SUCCESS): a detector of errors subscribes
    to those instead of to every reply (`procedures=()` for failures alone).
    A detector without `wants` sees every event, every detail.
    """
    kinds: frozenset[str] | None = None
    layers: frozenset[str] | None = None
    programs: frozenset[str] | None = None
    procedures: frozenset[str] | None = None
    details: frozenset[str] | None = None
    failures: bool = False

    def __post_init__(self):
        for name in ("kinds", "layers", "programs", "procedures", "details"):
            object.__setattr__(self, name, _names(getattr(self, name)))

    def matches(self, layer, kind, program, procedure, failed: bool = False) -> bool:
        """Whether an event of this layer, kind, program and procedure reaches the detector;
        `failed`: the event is a failed reply."""
        if self.kinds is not None or self.layers is not None:
            if not ((self.kinds is not None and kind in self.kinds)
                    or (self.layers is not None and layer in self.layers)):
                return False
        if isinstance(kind, str) and kind.startswith("rpc."):
            if self.programs is not None and program not in self.programs:
                return False
            if self.procedures is not None and procedure not in self.procedures:
                return self.failures and failed
        return True


EVERYTHING = Wants()
NOTHING = Wants(kinds=(), layers=(), details=())
# due() may return this: no wake-up during the input, one tick(now) with the input's last
# event time right before finish() (what a request still waiting at the end is judged by)
END_OF_INPUT = 1 << 63


def wants_of(detector) -> Wants:
    wants = getattr(detector, "wants", None)
    return wants if isinstance(wants, Wants) else EVERYTHING


def needs_of(detector) -> frozenset[str]:
    """The layers without which the detector finds nothing (its `needs`)."""
    needs = getattr(detector, "needs", None)
    if not needs or isinstance(needs, str):
        return frozenset()
    try:
        return frozenset(map(str, needs))
    except TypeError:
        return frozenset()


def details_needed(detectors) -> frozenset[str] | None:
    """The procedures whose details some detector, or the shared state they read, reads;
    None: all of them."""
    from .state import GlusterState
    needed: set[str] = set(GlusterState.DETAILS)
    for det in detectors:
        details = wants_of(det).details
        if details is None:
            return None
        needed |= details
    return frozenset(needed)


@dataclass(frozen=True)
class Option:
    """A setting a detector declares: users set it with `-o DETECTOR.NAME=VALUE` or in a
    `--config` file; its type is the default's (int, float, bool or str)."""
    default: Any
    help: str


class Detector:
    """Convenience base: subclasses set `id` (and `wants`) and implement `observe` (and
    maybe `finish`).

    `options` declares the detector's settings ({name: Option}); `self.option(name)` reads
    one: the user's value, else the default."""

    id = "unnamed"
    wants = EVERYTHING
    # Layers without which it finds nothing ({"probe"}: it reads the wire too, but only
    # beside probe events); `correlate detectors` tells users. Empty: any layer it reads.
    needs: frozenset[str] = frozenset()
    options: dict[str, Option] = {}
    settings: dict[str, Any] = {}

    def option(self, name: str):
        return self.settings[name] if name in self.settings else self.options[name].default

    def observe(self, event: dict) -> Iterable[dict]:
        return ()

    def finish(self) -> Iterable[dict]:
        return ()

    def drops(self) -> dict[str, int]:
        """What this detector left unexamined to keep its state bounded: reason -> count.
        The runtime reports the non-zero ones after `finish`, as readers report skips."""
        return {}

    def finding(self, time_ns: int, *, severity: str, title: str, explanation: str,
                remedy: str, evidence: list[dict], key: str = "", refines: bool = False,
                **extra) -> dict:
        """A finding dict. `severity` is one of SEVERITIES (info, warning, error, critical;
        anything else raises ValueError). `key` names the cause: findings with equal
        (detector, key) fold. `extra` fields (brick, volume, client, path, gfid, ...) are
        top-level keys users filter and suppress on.

        `refines=True` says more about a finding already reported (same key) without counting
        a new occurrence: its evidence is added and its explanation replaces the first one in
        the `finding.update` at the end (a count that grew since, say)."""
        if severity not in SEVERITIES:     # a plugin author's typo: say what is valid
            raise ValueError(f"detector {self.id}: severity {severity!r} is not one of "
                             f"{', '.join(SEVERITIES)}")
        return make_event(time_ns, "finding", "finding", f"detector:{self.id}",
                          detector=self.id, severity=severity, title=title,
                          explanation=explanation, remedy=remedy,
                          evidence=[evidence_of(e) for e in evidence], key=key or title,
                          count=0 if refines else 1, **extra)


def load_detectors(pm, config: dict | None = None, state=None, *,
                   origins: dict[str, str] | None = None) -> tuple[list, list[dict]]:
    """Every detector from every plugin (built-ins included), through the hook, all given
    one shared Gluster state (`state`, else a new `correlate.state.GlusterState`).
    `origins`, when given, is filled with {detector id: plugin name}.

    A plugin that failed to import, or whose hook raises, is reported by name (a
    `detector.error` event in the second list) and the others still load."""
    from .plugin_manager import call_each, failed_plugins
    from .state import GlusterState
    state = GlusterState() if state is None else state
    detectors, errors = [], []
    for f in failed_plugins(pm):
        errors.append(make_event(0, "finding", "detector.error", f"plugin:{f['name']}",
                                 detector=f["name"], severity="error",
                                 title=f"plugin {f['name']} failed to load",
                                 explanation=f["error"],
                                 remedy=f"install what {f['distribution']} needs, or report it "
                                        "to the plugin's authors"))
    for name, result, exc in call_each(pm, "correlate_detectors", config=config or {}, state=state):
        if exc is None:
            detectors.extend(result or [])
            if origins is not None:
                origins.update((getattr(d, "id", type(d).__name__), name) for d in result or [])
            continue
        errors.append(make_event(0, "finding", "detector.error", f"plugin:{name}",
                                 detector=name, severity="error",
                                 title=f"plugin {name} failed to load its detectors",
                                 explanation=f"{type(exc).__name__}: {exc}",
                                 remedy="report it to the plugin's authors"))
    return detectors, errors


def _coerce(text, default, where: str):
    """A user's value (text from -o, or a TOML value) as the type of the option's default."""
    kind = type(default)
    if not isinstance(text, str):
        if kind is float and isinstance(text, int) and not isinstance(text, bool):
            return _finite(float(text), where)
        if isinstance(text, kind):
            return _finite(text, where)
        raise ValueError(f"{where}: expected {kind.__name__}, got {text!r}")
    try:
        if kind is bool:
            value = {"true": True, "yes": True, "1": True, "on": True,
                     "false": False, "no": False, "0": False, "off": False}[text.strip().lower()]
            return value
        value = kind(text) if kind in (int, float) else text
    except (KeyError, ValueError):
        raise ValueError(f"{where}: expected {kind.__name__}, got {text!r}") from None
    return _finite(value, where)


MAX_NUMBER = 10 ** 12       # an option's number beyond this is a typo (and overflows ns)


def _finite(value, where: str):
    """A number option's value, refused when NaN, infinite or beyond MAX_NUMBER (a detector
    would compare against it, or multiply it into nanoseconds, and fail at run time)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not (math.isfinite(value) and abs(value) <= MAX_NUMBER):
        raise ValueError(f"{where}: expected a finite number of at most {MAX_NUMBER:,}, got {value!r}")
    return value


def detector_settings(detectors: list) -> dict[str, dict[str, Any]]:
    """{detector id: {option: value}} as each detector will use them, defaults included
    (what the correlate_probe_specs hook receives as `options`)."""
    out: dict[str, dict[str, Any]] = {}
    for det in detectors:
        declared = getattr(det, "options", None) or {}
        det_id = getattr(det, "id", None)
        if det_id and declared:
            out[det_id] = {name: det.option(name) for name in declared}
    return out


def configure_detectors(detectors: list, values: dict[str, dict[str, Any]]) -> None:
    """Give each detector the settings the user chose ({detector id: {name: value}}).

    ValueError names an unknown detector or option, with the ones that exist."""
    by_id = {getattr(d, "id", None): d for d in detectors}
    for det_id, chosen in values.items():
        det = by_id.get(det_id)
        if det is None:
            raise ValueError(f"no detector {det_id!r}; detectors: {', '.join(sorted(filter(None, by_id)))}")
        declared = getattr(det, "options", {}) or {}
        settings = {}
        for name, value in chosen.items():
            if name not in declared:
                known = ", ".join(sorted(declared)) or "none"
                raise ValueError(f"detector {det_id} has no option {name!r}; its options: {known}")
            settings[name] = _coerce(value, declared[name].default, f"{det_id}.{name}")
        det.settings = {**getattr(det, "settings", {}), **settings}
