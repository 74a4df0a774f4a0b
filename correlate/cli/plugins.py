"""`correlate plugins` and `correlate detectors`: what is loaded, from one description of
each detector (where it comes from, what it is for, its options, what it reads and needs)."""
from __future__ import annotations

import json
import sys

import click

from ..detector import needs_of as declared_needs, wants_of
from ..errors import CorrelateError
from ..plugin_manager import call_each, failed_plugins, get_plugin_manager, plugin_info
from .run_setup import (detector_options, make_runner, parse_detector_options, parse_policy,
                        selection_options)

# The layer an event kind belongs to (the event contract's `layer`), by the kind's prefix.
_LAYER_OF = {"rpc": "wire", "tcp": "wire", "probe": "probe", "log": "log", "finding": "finding"}


def _sorted(names) -> list[str] | None:
    return None if names is None else sorted(names)


def layers_read(det) -> list[str]:
    """The layers whose events reach the detector (every one when it wants everything)."""
    wants = wants_of(det)
    if wants.kinds is None and wants.layers is None:
        return ["wire", "probe", "log"]
    layers = set(wants.layers or ())
    layers |= {_LAYER_OF.get(k.split(".")[0], "other") for k in wants.kinds or ()}
    return sorted(layers)


def needs_of(det) -> list[str]:
    """Layers without which the detector finds nothing: its own `needs`, else those it reads
    when the wire is not among them."""
    needs = declared_needs(det)
    if needs:
        return sorted(needs)
    read = layers_read(det)
    return [] if "wire" in read else read


def description(det) -> str:
    """The first sentence of the detector's class docstring, else of its module's, without a
    leading `id:` (the built-ins start their module docstring with it)."""
    doc = type(det).__doc__ or getattr(sys.modules.get(type(det).__module__), "__doc__", None) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    sentence = paragraph.split(". ")[0].rstrip(".")
    det_id = str(getattr(det, "id", ""))
    return (sentence.removeprefix(f"{det_id}:").strip() if det_id else sentence)[:300]


def detector_rows(pm, policy=None) -> tuple[list[dict], list[str]]:
    """One row per loaded detector, and the plugins whose correlate_detectors hook failed."""
    from ..detector import load_detectors
    origins: dict[str, str] = {}
    detectors, errors = load_detectors(pm, {}, origins=origins)
    dists = getattr(pm, "correlate_dists", {})
    rows = []
    for det in detectors:
        det_id = str(getattr(det, "id", type(det).__name__))
        plugin = origins.get(det_id, "?")
        dist, version = dists.get(plugin, (None, None))
        wants = wants_of(det)
        options = {name: {"default": spec.default, "help": spec.help}
                   for name, spec in (getattr(det, "options", None) or {}).items()}
        options["enabled"] = {"default": True, "help": "run this detector (every detector has it)"}
        row = {"id": det_id, "plugin": plugin, "distribution": dist, "version": version,
               "description": description(det), "options": options,
               "wants": {"kinds": _sorted(wants.kinds), "layers": _sorted(wants.layers),
                         "programs": _sorted(wants.programs),
                         "procedures": _sorted(wants.procedures)},
               "reads": layers_read(det), "needs": needs_of(det)}
        if policy is not None:
            row["enabled"] = policy.runs(det_id)
            row["suppressed_by"] = [r.describe() or "(all its findings)" for r in policy.rules
                                    if r.detector in (det_id, "*")]
        rows.append(row)
    rows.sort(key=lambda r: r["id"])
    failed = {f["name"] for f in failed_plugins(pm)}
    hook_errors = [f"{e['title']}: {e['explanation']}" for e in errors if e["detector"] not in failed]
    return rows, hook_errors


@click.command("plugins")
@click.option("--json", "json_out", is_flag=True, help="Print as JSON.")
def plugins_cmd(json_out):
    """List loaded plugins (built-in detectors included): version, hooks, detectors with their
    options, output formats and probe groups; plugins that failed to load, with the reason.

    Set CORRELATE_TRACE_HOOKS=1 to see every hook call of a run on stderr, and
    CORRELATE_DISABLE_PLUGINS=NAME,... to turn plugins off without uninstalling them.

    \b
    Examples:
      correlate plugins
      correlate plugins --json | jq '.[] | {name, options}'
      CORRELATE_TRACE_HOOKS=1 correlate analyze capture.pcap
      CORRELATE_DISABLE_PLUGINS=lock_wait correlate plugins
      correlate detectors             # each detector: what it reads, needs and is set to
    """
    pm = get_plugin_manager()
    rows = plugin_info(pm)
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        r.setdefault("detectors", [])
        r["options"], r["outputs"], r["probe_groups"] = {}, [], []
    detectors, errors = detector_rows(pm)
    for d in detectors:
        plugin = by_name.get(d["plugin"])
        if plugin is not None:
            plugin["detectors"].append(d["id"])
            plugin["options"].update((f"{d['id']}.{name}", spec) for name, spec in d["options"].items()
                                     if name != "enabled")
    for name, result, exc in call_each(pm, "correlate_outputs"):
        if exc is None:
            by_name[name]["outputs"] = sorted(result or {})
    for name, result, exc in call_each(pm, "correlate_probe_specs", options={}):
        if exc is None:
            by_name[name]["probe_groups"] = sorted({getattr(s, "group", "?") for s in result or []})
    if json_out:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        for r in rows:
            dist = f"{r['distribution']} {r['version']}" if r["distribution"] else "(not from a package)"
            if r["status"] == "failed":
                click.echo(f"{r['name']:<20} {dist:<26} FAILED: {r['error']}")
                continue
            if r["status"] == "disabled":
                click.echo(f"{r['name']:<20} {dist:<26} disabled (CORRELATE_DISABLE_PLUGINS)")
                continue
            click.echo(f"{r['name']:<20} {dist:<26} hooks: {', '.join(r['hooks'])}")
            for label, key in (("detectors", "detectors"), ("output formats", "outputs"),
                               ("probe groups", "probe_groups")):
                if r[key]:
                    click.echo(f"    {label}: {', '.join(r[key])}")
            for opt, spec in r["options"].items():
                click.echo(f"    -o {opt}={spec['default']!r}  {spec['help']}")
    for e in errors:
        click.echo(f"correlate: {e}", err=True)
    if not rows:
        raise CorrelateError("no plugins loaded: is gluster-correlate installed (pip install -e .)?")


def _text(d: dict) -> list[str]:
    from ..outputs.terminal import safe_text     # a third-party plugin's text: escaped
    state = "" if d.get("enabled", True) else "  [disabled]"
    dist = f"{d['distribution']} {d['version']}" if d["distribution"] else "not from a package"
    lines = [f"{safe_text(d['id'])}{state}  (plugin {safe_text(d['plugin'])}, {safe_text(dist)})",
             f"    {safe_text(d['description'], 200)}"]
    w = d["wants"]
    what = ", ".join(w["kinds"] or []) or "every event"
    if w["layers"]:
        what += f"; layers {', '.join(w['layers'])}"
    if w["procedures"]:
        procs = w["procedures"]
        what += f"; procedures {', '.join(procs[:8])}{' ...' if len(procs) > 8 else ''}"
    lines.append(f"    reads: {safe_text(what, 400)}")
    if d["needs"]:
        lines.append(f"    needs: {', '.join(map(safe_text, d['needs']))} (says nothing without them)")
    for name, spec in d["options"].items():
        value = json.dumps(spec["default"]) if isinstance(spec["default"], bool) else repr(spec["default"])
        lines.append(f"    -o {safe_text(d['id'])}.{safe_text(name)}={safe_text(value)}  "
                     f"{safe_text(spec['help'], 300)}")
    for rule in d.get("suppressed_by") or []:
        lines.append(f"    suppressed: {safe_text(rule, 300)}")
    return lines


@click.command("detectors")
@click.option("--json", "json_out", is_flag=True, help="Print as JSON (a list, one object per detector).")
@selection_options
@detector_options
def detectors_cmd(json_out, only_detectors, skip_detectors, suppress_specs, option_specs, config_path):
    """List every detector: the plugin it comes from, what it finds, its options with their
    defaults, what it reads (event kinds, procedures) and needs (probes, logs) to say
    anything, and whether the given config and options disable or suppress it.

    \b
    Examples:
      correlate detectors
      correlate detectors --json | jq -r '.[] | select(.needs != []) | .id'
      correlate detectors --config site.toml          # what that file turns off
      correlate detectors --no-plugin lock_wait       # without that plugin at all
      correlate analyze capture.pcap --no-detector rpc-unanswered
      correlate analyze capture.pcap --detector stale-handle --detector lost-write
      correlate analyze capture.pcap --suppress stale-handle:brick=127.0.0.2:/srv/b1
    """
    # Built as a run would build it: the same checks of names, options and rules.
    policy = make_runner({}, parse_detector_options(option_specs, config_path),
                         parse_policy(config_path, only_detectors, skip_detectors,
                                      suppress_specs)).policy
    rows, errors = detector_rows(get_plugin_manager(), policy)
    if json_out:
        click.echo(json.dumps(rows, indent=2, default=str))
    else:
        for d in rows:
            click.echo("\n".join(_text(d)))
    for e in errors:
        from ..outputs.terminal import safe_text
        click.echo(f"correlate: {safe_text(e, 500)}", err=True)
    if not rows:
        raise CorrelateError("no detectors loaded: is gluster-correlate installed (pip install -e .)?")
