"""Detectors and the runtime that feeds them events and folds their findings.

A detector is any object with an `id`, `observe(event) -> iterable of findings` and
`finish() -> iterable of findings`, and optionally `wants` (a `Wants`: the events it needs).
Subclass `Detector` for the helpers. Findings are event dicts (layer "finding"); make them
with `Detector.finding(...)`.
"""
from __future__ import annotations

import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .events import DETAILS_LATER, make_event, with_details

SEVERITIES = ("info", "warning", "error", "critical")

# Keys left out of a finding's evidence. The credential stays: `timeline --pid` finds a
# finding by the process its calls came from.
_EVIDENCE_DROP: frozenset[str] = frozenset()
MAX_ADDED_EVIDENCE = 50   # evidence a folded finding gathers from its repeats


_IDENTITY_KEYS = ("time_ns", "kind", "source", "src", "xid", "pid", "tid")


def _event_identity(ev) -> tuple:
    """Hashable whatever a plugin put in the fields (an object there is compared as text)."""
    if not isinstance(ev, dict):
        return ("not an event", repr(ev)[:200])
    return tuple(map(_hashable, map(ev.get, _IDENTITY_KEYS)))


def _count(finding: dict) -> int:
    n = finding.get("count", 1)
    return n if type(n) is int and n > 0 else 1


def _hashable(v):
    return v if v is None or type(v) in (int, str, float, bool) else repr(v)[:200]


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
    errno_name are always there). A detector without `wants` sees every event, every detail.
    """
    kinds: frozenset[str] | None = None
    layers: frozenset[str] | None = None
    programs: frozenset[str] | None = None
    procedures: frozenset[str] | None = None
    details: frozenset[str] | None = None

    def __post_init__(self):
        for name in ("kinds", "layers", "programs", "procedures", "details"):
            object.__setattr__(self, name, _names(getattr(self, name)))

    def matches(self, layer, kind, program, procedure) -> bool:
        if self.kinds is not None or self.layers is not None:
            if not ((self.kinds is not None and kind in self.kinds)
                    or (self.layers is not None and layer in self.layers)):
                return False
        if isinstance(kind, str) and kind.startswith("rpc."):
            if self.programs is not None and program not in self.programs:
                return False
            if self.procedures is not None and procedure not in self.procedures:
                return False
        return True


EVERYTHING = Wants()
NOTHING = Wants(kinds=(), layers=(), details=())
MAX_ROUTES = 4096     # (layer, kind, program, procedure) combinations remembered
# due() may return this: no wake-up during the input, one tick(now) with the input's last
# event time right before finish() (what a request still waiting at the end is judged by)
END_OF_INPUT = 1 << 63


def wants_of(detector) -> Wants:
    wants = getattr(detector, "wants", None)
    return wants if isinstance(wants, Wants) else EVERYTHING


def details_needed(detectors) -> frozenset[str] | None:
    """The procedures whose details some detector reads; None: all of them."""
    needed: set[str] = set()
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
        """A finding dict. `key` names the cause: findings with equal (detector, key) fold.

        `refines=True` says more about a finding already reported (same key) without counting
        a new occurrence: its evidence is added and its explanation replaces the first one in
        the `finding.update` at the end (a count that grew since, say)."""
        assert severity in SEVERITIES, severity
        return make_event(time_ns, "finding", "finding", f"detector:{self.id}",
                          detector=self.id, severity=severity, title=title,
                          explanation=explanation, remedy=remedy,
                          evidence=[evidence_of(e) for e in evidence], key=key or title,
                          count=0 if refines else 1, **extra)


class DetectorRunner:
    """Feeds each event to the detectors that want it; folds repeated findings; isolates
    failures.

    Which detectors want an event depends only on its (layer, kind, program, procedure):
    the answer is computed once per combination and kept in a table, in detector order.
    A detector that declares `wants` and acts on the passing of time (a reply overdue) says
    when through `due()`; `tick(now)` is then called at the first event at or after that
    time which it does not want, so it acts exactly when it would have seen every event. A
    due() of END_OF_INPUT asks only for one tick with the last event's time before finish().
    subscriptions=False hands every event to every detector, whatever it declared.

    A finding whose (detector, key) was already reported is counted, not re-emitted;
    `finish()` emits a `finding.update` with the final count for each folded finding. A
    detector that raises is disabled and reported as a `detector.error` event, by name.

    `load_errors` (plugins that failed before any event, from `load_detectors`) leave with the
    first event, stamped with its time: an event that no input timed must not stretch the
    timeline back to 1970."""

    def __init__(self, detectors: list, on_new_finding=None, load_errors: Iterable[dict] = (),
                 subscriptions: bool = True):
        self.detectors = list(detectors)
        self._load_errors = list(load_errors)
        self._wants = [wants_of(d) if subscriptions else EVERYTHING for d in self.detectors]
        self._routes: dict[tuple, tuple[int, ...]] = {}
        # Detectors that are woken by time: their index -> the time they asked for.
        self._timed = [w is not EVERYTHING and callable(getattr(d, "due", None))
                       and callable(getattr(d, "tick", None))
                       for d, w in zip(self.detectors, self._wants)]
        self._due: dict[int, int] = {}
        self._next_due: int | None = None
        self._last_now: int | None = None     # the latest event time seen
        self.disabled: dict[str, str] = {e.get("detector", "?"): e.get("explanation", "")
                                         for e in self._load_errors}
        self._seen: dict[tuple[str, str], dict] = {}
        self._on_new = on_new_finding
        self.findings: list[dict] = []
        self.drops: dict[str, dict[str, int]] = {}    # detector -> reason -> count, after finish

    def _run(self, det, method: str, arg=None) -> list[dict]:
        name = getattr(det, "id", type(det).__name__)
        if name in self.disabled:
            return []
        try:
            fn = getattr(det, method)
            result = fn() if method == "finish" else fn(arg)
            return list(result or ())
        except Exception as exc:   # a plugin's bug must not end the run
            return self._failed(self.detectors.index(det), exc, arg)

    def _failed(self, i: int, exc: Exception, arg) -> list[dict]:
        """Disable detector i after it raised: it gets no more events; report it by name."""
        det = self.detectors[i]
        name = getattr(det, "id", type(det).__name__)
        self.disabled[name] = f"{type(exc).__name__}: {exc}"
        self._wants[i] = NOTHING
        self._routes.clear()
        self._timed[i] = False
        self._due.pop(i, None)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        t = arg["time_ns"] if isinstance(arg, dict) else arg if isinstance(arg, int) else 0
        return [make_event(t, "finding", "detector.error", f"detector:{name}",
                           detector=name, severity="error",
                           title=f"detector {name} failed and was disabled",
                           explanation=f"{type(exc).__name__}: {exc} "
                                       f"({where.filename}:{where.lineno})",
                           remedy="report it to the plugin's authors; the run went on "
                                  "without this detector")]

    def _route(self, ev: dict) -> tuple[int, ...]:
        key = (ev.get("layer"), ev.get("kind"), ev.get("program"), ev.get("procedure"))
        try:
            return self._routes[key]
        except KeyError:
            pass
        except TypeError:          # a saved timeline's odd values (a list as kind): no table
            return tuple(i for i, w in enumerate(self._wants) if w.matches(*key))
        route = tuple(i for i, w in enumerate(self._wants) if w.matches(*key))
        if len(self._routes) < MAX_ROUTES:
            self._routes[key] = route
        return route

    def _refresh_due(self, i: int) -> None:
        try:
            due = self.detectors[i].due()
        except Exception:          # a broken due() only loses the wake-up
            due = None
        if due is None:
            self._due.pop(i, None)
        else:
            self._due[i] = due
            if self._next_due is None or due < self._next_due:
                self._next_due = due

    def _call(self, i: int, method: str, arg, found: list[dict]) -> None:
        """Detector i's observe(event) or tick(now); its findings appended to `found`."""
        before = len(found)
        try:
            result = getattr(self.detectors[i], method)(arg)
            if result:
                found.extend(result)
        except Exception as exc:   # a plugin's bug must not end the run
            del found[before:]
            found.extend(self._failed(i, exc, arg))
            return
        if self._timed[i]:
            self._refresh_due(i)

    def observe(self, event: dict) -> list[dict]:
        found = self._take_load_errors(event["time_ns"]) if self._load_errors else []
        route = self._route(event)
        now = event.get("time_ns")
        if type(now) is int and (self._last_now is None or now > self._last_now):
            self._last_now = now
        if self._next_due is not None and type(now) is int and now >= self._next_due:
            for i in range(len(self.detectors)):   # in detector order, as without filtering
                if i in route:
                    self._call(i, "observe", event, found)
                elif i in self._due and now >= self._due[i]:
                    self._call(i, "tick", now, found)
            self._next_due = min(self._due.values(), default=None)
        else:
            for i in route:
                self._call(i, "observe", event, found)
        return self._fold(found) if found else found

    def _fold(self, found: list[dict]) -> list[dict]:
        out = []
        for f in found:
            if not isinstance(f, dict):
                continue      # not a finding at all: nothing to show or fold
            if f.get("kind") != "finding":
                out.append(f)
                continue
            evidence = f.get("evidence")
            if isinstance(evidence, list) and any(isinstance(e, dict) and DETAILS_LATER in e
                                                  for e in evidence):
                f["evidence"] = [with_details(e) if isinstance(e, dict) else e for e in evidence]
            key = (_hashable(f.get("detector", "")), _hashable(f.get("key", "")))
            first = self._seen.get(key)
            if first is None:
                f["count"] = _count(f)
                f.setdefault("id", f"{key[0]}#{len(self._seen) + 1}")
                self._seen[key] = f
                self.findings.append(f)
                out.append(f)
                if self._on_new:
                    self._on_new(f)
            else:
                refines = f.get("count") == 0     # more about it, not another occurrence
                first["count"] = _count(first) + (0 if refines else _count(f))
                first["last_time_ns"] = f.get("time_ns")
                if refines:
                    first["_refined"] = True
                    if f.get("explanation") and f["explanation"] != first.get("explanation"):
                        first["_explanation"] = f["explanation"]
                evidence = f.get("evidence")
                self._merge_evidence(first, evidence if isinstance(evidence, list) else [])
        return out

    @staticmethod
    def _merge_evidence(first: dict, evidence: list[dict]) -> None:
        """A repeat may add evidence the first lacked (another brick, another client)."""
        added = first.setdefault("_added_evidence", [])
        if len(added) >= MAX_ADDED_EVIDENCE:
            return      # full: a million repeats must not each rebuild the set below
        own = first.get("evidence")
        have = {_event_identity(e) for e in (own if isinstance(own, list) else []) + added}
        for e in evidence:
            if len(added) >= MAX_ADDED_EVIDENCE:
                break
            if _event_identity(e) not in have:
                have.add(_event_identity(e))
                added.append(e)

    def _take_load_errors(self, time_ns: int) -> list[dict]:
        errors, self._load_errors = self._load_errors, []
        return [{**e, "time_ns": time_ns} for e in errors]

    def _collect_drops(self, det) -> None:
        name = getattr(det, "id", type(det).__name__)
        try:
            drops = {str(k): n for k, n in (getattr(det, "drops", dict)() or {}).items()
                     if type(n) is int and n > 0}
        except Exception as exc:   # a plugin's bug must not end the run
            drops = {f"(drops() failed: {type(exc).__name__})": 1}
        if drops:
            self.drops[name] = drops

    def drop_lines(self) -> list[str]:
        """One line per kind of thing a detector dropped, for stderr."""
        return [f"detector {name}: dropped {n} x {reason}"
                for name, drops in self.drops.items() for reason, n in drops.items()]

    def finish(self) -> list[dict]:
        found = self._take_load_errors(0)    # no event came at all
        if self._last_now is not None:
            for i in [i for i, due in self._due.items() if due == END_OF_INPUT]:
                self._call(i, "tick", self._last_now, found)
        for det in self.detectors:
            found.extend(self._run(det, "finish"))
            self._collect_drops(det)
        out = self._fold(found)
        updates = []
        for f in self.findings:
            if _count(f) > 1 or f.pop("_refined", False):
                last = f.get("last_time_ns")
                extra = {"explanation": f.pop("_explanation")} if "_explanation" in f else {}
                updates.append(make_event(last if type(last) is int else 0, "finding", "finding.update",
                                          f.get("source", ""), detector=f.get("detector"), id=f["id"],
                                          count=f["count"], title=f.get("title"),
                                          evidence=f.pop("_added_evidence", []), **extra))
        return out + sorted(updates, key=lambda u: u["time_ns"])


def load_detectors(pm, config: dict | None = None) -> tuple[list, list[dict]]:
    """Every detector from every plugin (built-ins included), through the hook.

    A plugin that failed to import, or whose hook raises, is reported by name (a
    `detector.error` event in the second list) and the others still load."""
    from .plugin_manager import call_each, failed_plugins
    detectors, errors = [], []
    for f in failed_plugins(pm):
        errors.append(make_event(0, "finding", "detector.error", f"plugin:{f['name']}",
                                 detector=f["name"], severity="error",
                                 title=f"plugin {f['name']} failed to load",
                                 explanation=f["error"],
                                 remedy=f"install what {f['distribution']} needs, or report it "
                                        "to the plugin's authors"))
    for name, result, exc in call_each(pm, "correlate_detectors", config=config or {}):
        if exc is None:
            detectors.extend(result or [])
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
            return float(text)
        if isinstance(text, kind):
            return text
        raise ValueError(f"{where}: expected {kind.__name__}, got {text!r}")
    try:
        if kind is bool:
            value = {"true": True, "yes": True, "1": True, "on": True,
                     "false": False, "no": False, "0": False, "off": False}[text.strip().lower()]
            return value
        return kind(text) if kind in (int, float) else text
    except (KeyError, ValueError):
        raise ValueError(f"{where}: expected {kind.__name__}, got {text!r}") from None


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
