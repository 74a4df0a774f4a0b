"""The runtime that feeds detectors their events: routing by subscription (Wants),
wake-ups by time (due/tick), folding repeated findings, and isolating a detector that fails.
"""
from __future__ import annotations

import traceback
from collections.abc import Iterable

from ..detector import END_OF_INPUT, EVERYTHING, NOTHING, needs_of, wants_of
from ..events import DETAILS_LATER, make_event, with_details
from ..state import GlusterState
from ..diagnostics import Diagnostics
from ..validate import clean_event


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

MAX_ROUTES = 4096     # (layer, kind, program, procedure, failed) combinations remembered


class _Route:
    """The detectors one kind of event goes to: `calls` (index, observe, timed) in detector
    order, `members` for the ticking path, `absent_timed` the timed detectors it skips (whose
    next wake-up must be known before such an event)."""

    __slots__ = ("calls", "members", "absent_timed")

    def __init__(self, calls: tuple, members: frozenset, absent_timed: tuple):
        self.calls = calls
        self.members = members
        self.absent_timed = absent_timed


class DetectorRunner:
    """Feeds each event to the detectors that want it; folds repeated findings; isolates
    failures.

    Which detectors want an event depends only on its (layer, kind, program, procedure) and
    whether it is a failed reply: the answer is computed once per combination and kept in a
    table, in detector order. A detector that `needs` probe events (it finds nothing
    without them) is fed nothing when no input can carry them (`expect_probes(False)`).
    A detector that declares `wants` and acts on the passing of time (a reply overdue) says
    when through `due()`; `tick(now)` is then called at the first event at or after that
    time which it does not want, so it acts exactly when it would have seen every event. A
    due() of END_OF_INPUT asks only for one tick with the last event's time before finish().
    due() is asked only when its answer matters: after the detector was called, once an
    event it does not want comes (before the shared state learns that event, so it sees what
    it would have seen right after the call); a detector that wants nearly everything is
    asked rarely instead of after every event. due() must depend only on what the detector
    and the shared state hold, never on the clock.
    subscriptions=False hands every event to every detector, whatever it declared.

    A finding whose (detector, key) was already reported is counted, not re-emitted;
    `finish()` emits a `finding.update` with the final count for each folded finding. A
    detector that raises is disabled and reported as a `detector.error` event, by name.

    `load_errors` (plugins that failed before any event, from `load_detectors`) leave with the
    first event, stamped with its time: an event that no input timed must not stretch the
    timeline back to 1970.

    `policy` (a correlate.engine.finding_policy.FindingPolicy, set by whoever builds the runner)
    suppresses findings the user silenced: they are counted there, not shown or folded."""

    policy = None

    def __init__(self, detectors: list, on_new_finding=None, load_errors: Iterable[dict] = (),
                 subscriptions: bool = True, state=None):
        self.detectors = list(detectors)
        # The shared Gluster state, fed every event before any detector: the one given, else
        # the one(s) the detectors were built with (`detector.state`).
        states = [state] if state is not None else [getattr(d, "state", None) for d in self.detectors]
        self._states = list({id(s): s for s in states if isinstance(s, GlusterState)}.values())
        self._load_errors = list(load_errors)
        self.disabled: dict[str, str] = {e.get("detector", "?"): e.get("explanation", "")
                                         for e in self._load_errors}
        self._subscriptions = subscriptions
        self._set_wants(probes=True)
        self._due: dict[int, int] = {}
        self._next_due: int | None = None
        self._stale: set[int] = set()     # timed detectors called since due() was last asked
        # looked up once, called per event (one without observe fails when first called)
        self._observers = [getattr(d, "observe", None) or (lambda ev, d=d: d.observe(ev))
                           for d in self.detectors]
        self._last_now: int | None = None     # the latest event time seen
        self._seen: dict[tuple[str, str], dict] = {}
        self._on_new = on_new_finding
        self.findings: list[dict] = []
        self.drops: dict[str, dict[str, int]] = {}    # detector -> reason -> count, after finish
        # Findings meet the event schema as every input does: a plugin's finding with a value
        # of the wrong type loses that value (counted), so no output or notifier trips on it
        self.finding_diag = Diagnostics("findings")
        self.state_drops: dict[str, int] = {}         # the shared state's: reason -> count

    def _set_wants(self, probes: bool) -> None:
        wants = [wants_of(d) if self._subscriptions else EVERYTHING for d in self.detectors]
        if not probes and self._subscriptions:
            wants = [NOTHING if "probe" in needs_of(d) else w for d, w in zip(self.detectors, wants)]
        wants = [NOTHING if getattr(d, "id", type(d).__name__) in self.disabled else w
                 for d, w in zip(self.detectors, wants)]
        self._wants = wants
        self._routes: dict[tuple, _Route] = {}
        # Detectors that are woken by time: their index -> the time they asked for.
        self._timed = [w is not EVERYTHING and w is not NOTHING and callable(getattr(d, "due", None))
                       and callable(getattr(d, "tick", None))
                       for d, w in zip(self.detectors, self._wants)]

    def expect_probes(self, expected: bool) -> None:
        """Whether any input can carry probe events (GlusterState.expect_probes); said before
        the first event."""
        for state in self._states:
            state.expect_probes(expected)
        self._set_wants(probes=expected)

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
        self._stale.discard(i)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        t = arg["time_ns"] if isinstance(arg, dict) else arg if isinstance(arg, int) else 0
        return [make_event(t, "finding", "detector.error", f"detector:{name}",
                           detector=name, severity="error",
                           title=f"detector {name} failed and was disabled",
                           explanation=f"{type(exc).__name__}: {exc} "
                                       f"({where.filename}:{where.lineno})",
                           remedy="report it to the plugin's authors; the run went on "
                                  "without this detector")]

    def _route(self, ev: dict) -> _Route:
        key = (ev.get("layer"), ev.get("kind"), ev.get("program"), ev.get("procedure"),
               ev.get("op_ret") == -1 or ev.get("reject_status") is not None
               or ev.get("accept_status", "SUCCESS") != "SUCCESS")
        try:
            return self._routes[key]
        except KeyError:
            pass
        except TypeError:          # a saved timeline's odd values (a list as kind): no table
            return self._make_route(key)
        route = self._make_route(key)
        if len(self._routes) < MAX_ROUTES:
            self._routes[key] = route
        return route

    def _make_route(self, key: tuple) -> _Route:
        members = [i for i, w in enumerate(self._wants) if w.matches(*key)]
        return _Route(tuple((i, self._observers[i], self._timed[i]) for i in members),
                      frozenset(members),
                      tuple(i for i, timed in enumerate(self._timed) if timed and i not in members))

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
        try:
            result = (self._observers[i] if method == "observe" else self.detectors[i].tick)(arg)
            if result and type(result) is not list:
                result = list(result)         # a generator that raises fails here, whole
        except Exception as exc:   # a plugin's bug must not end the run
            found.extend(self._failed(i, exc, arg))
            return
        if result:
            found.extend(result)
        if self._timed[i]:
            self._stale.add(i)

    def _refresh_stale(self, indices) -> None:
        """Ask due() of the stale detectors among `indices`."""
        stale = self._stale
        for i in indices:
            if i in stale:
                stale.discard(i)
                self._refresh_due(i)

    def observe(self, event: dict) -> list[dict]:
        route = self._route(event)
        if self._stale and route.absent_timed:
            self._refresh_stale(route.absent_timed)   # before the state moves on
        for state in self._states:
            state.observe(event)
        found = self._take_load_errors(event["time_ns"]) if self._load_errors else []
        now = event.get("time_ns")
        if type(now) is int and (self._last_now is None or now > self._last_now):
            self._last_now = now
        if self._next_due is not None and type(now) is int and now >= self._next_due:
            members, due = route.members, self._due
            for i in range(len(self.detectors)):   # in detector order, as without filtering
                if i in members:
                    self._call(i, "observe", event, found)
                elif i in due and i not in self._stale and now >= due[i]:
                    self._call(i, "tick", now, found)
            stale = self._stale          # their old due() answers no longer hold
            self._next_due = min((t for i, t in due.items() if i not in stale), default=None)
            return self._fold(found) if found else found
        stale = self._stale
        for i, observe, timed in route.calls:
            try:
                result = observe(event)
                if result and type(result) is not list:
                    result = list(result)
            except Exception as exc:   # a plugin's bug must not end the run
                found.extend(self._failed(i, exc, event))
                continue
            if result:
                found.extend(result)
            if timed:
                stale.add(i)
        return self._fold(found) if found else found

    def _fold(self, found: list[dict]) -> list[dict]:
        out = []
        for f in found:
            if isinstance(f, dict):
                evidence = f.get("evidence")
                if isinstance(evidence, list) and any(isinstance(e, dict) and DETAILS_LATER in e
                                                      for e in evidence):
                    f["evidence"] = [with_details(e) if isinstance(e, dict) else e for e in evidence]
                where = f.get("detector") if type(f.get("detector")) is str else ""
            else:
                where = ""
            f = clean_event(f, self.finding_diag, where)
            if f is None:
                continue      # not a finding at all: nothing to show or fold (counted)
            if f.get("kind") != "finding":
                out.append(f)
                continue
            key = (_hashable(f.get("detector", "")), _hashable(f.get("key", "")))
            first = self._seen.get(key)
            if first is None and self.policy is not None and self.policy.suppress(key, f):
                continue      # silenced by the user: counted by the policy, never notified
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
        """One line per kind of thing a detector, or the shared state, dropped, for stderr."""
        return [f"detector {name}: dropped {n} x {reason}"
                for name, drops in self.drops.items() for reason, n in drops.items()] + \
            self.finding_diag.summary_lines() + \
            [f"shared state: dropped {n} x {reason}"
             for reason, n in self.state_drops.items()]

    def finish(self) -> list[dict]:
        found = self._take_load_errors(0)    # no event came at all
        self._refresh_stale(list(self._stale))
        if self._last_now is not None:
            for i in [i for i, due in self._due.items() if due == END_OF_INPUT]:
                self._call(i, "tick", self._last_now, found)
        for det in self.detectors:
            found.extend(self._run(det, "finish"))
            self._collect_drops(det)
        for state in self._states:
            for reason, n in state.drops().items():
                if n:
                    self.state_drops[reason] = self.state_drops.get(reason, 0) + n
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
        summary = self.policy.summary_event(self._last_now or 0) if self.policy else None
        return out + sorted(updates, key=lambda u: u["time_ns"]) + ([summary] if summary else [])
