"""The one PluginManager: hook specs, entry-point loading, tracing for plugin authors, and
plugins turned off without uninstalling them (CORRELATE_DISABLE_PLUGINS, --no-plugin)."""
from __future__ import annotations

import importlib.metadata
import os
import sys
from functools import lru_cache

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "correlate"
TRACE_ENV = "CORRELATE_TRACE_HOOKS"   # set to 1 to print every hook call on stderr
DISABLE_ENV = "CORRELATE_DISABLE_PLUGINS"   # plugin names, comma-separated: never imported
NO_PLUGIN_KEY = "correlate.no_plugin"       # click context meta: this command's --no-plugin


def disabled_names() -> frozenset[str]:
    """The plugins turned off for this command: the environment's, and --no-plugin's (kept
    in the click context, so one command's choice never leaks into the next)."""
    names = {n.strip() for n in os.environ.get(DISABLE_ENV, "").replace(" ", ",").split(",")}
    import click
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        names |= set(ctx.find_root().meta.get(NO_PLUGIN_KEY, ()))
    return frozenset(filter(None, names))


def get_plugin_manager() -> pluggy.PluginManager:
    return _plugin_manager(disabled_names())


@lru_cache(maxsize=4)
def _plugin_manager(disabled: frozenset[str]) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("correlate")
    pm.add_hookspecs(hookspecs)
    for name in disabled:       # blocked before loading: a disabled plugin is not even imported
        pm.set_blocked(name)
    # Built-in detectors are registered by the same entry-point group as third-party ones.
    pm.correlate_dists, pm.correlate_failed, found = _load_entry_points(pm, ENTRY_POINT_GROUP)
    pm.correlate_disabled = found & disabled
    pm.correlate_unknown_disabled = disabled - found
    for f in pm.correlate_failed:
        print(f"correlate: plugin {f['name']} failed to load and is skipped: {f['error']}",
              file=sys.stderr)
    if pm.correlate_unknown_disabled and os.environ.get(DISABLE_ENV):
        from .text import safe_text     # the user's text: escaped
        print(f"correlate: {DISABLE_ENV}: no plugin named "
              f"{safe_text(', '.join(sorted(pm.correlate_unknown_disabled)), 200)}; "
              f"plugins: {', '.join(sorted(found))}", file=sys.stderr)
    return pm


def not_loaded(pm: pluggy.PluginManager) -> list[str]:
    """Plugins installed but not running: failed to import, or disabled."""
    return sorted({f["name"] for f in failed_plugins(pm)} | set(getattr(pm, "correlate_disabled", ())))


def failed_plugins(pm: pluggy.PluginManager) -> list[dict]:
    """Plugins whose module could not be imported or registered: name, distribution, error."""
    return getattr(pm, "correlate_failed", [])


def _load_entry_points(pm: pluggy.PluginManager, group: str) -> tuple[dict, list[dict], set[str]]:
    """pluggy's load_setuptools_entrypoints, except that a plugin whose import fails (a missing
    dependency, a syntax error) is skipped and returned instead of ending every command.
    Returns ({plugin name: (distribution, version)}, [failed plugins], every plugin's name)."""
    dists, failed, found = {}, [], set()
    for dist in list(importlib.metadata.distributions()):
        for ep in dist.entry_points:
            if ep.group != group:
                continue
            found.add(ep.name)
            if pm.get_plugin(ep.name) or pm.is_blocked(ep.name):
                if pm.is_blocked(ep.name):
                    dists[ep.name] = (dist.metadata["Name"], dist.version)
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                failed.append({"name": ep.name, "module": ep.value,
                               "distribution": dist.metadata["Name"], "version": dist.version,
                               "error": f"{type(exc).__name__}: {exc}"})
                continue
            dists[ep.name] = (dist.metadata["Name"], dist.version)
    return dists, failed, found


def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs):
    """Call one hook plugin by plugin: yields (plugin name, result, exception or None).

    Isolating each implementation means one broken plugin is named and skipped while the
    others still answer. With CORRELATE_TRACE_HOOKS=1 every call is printed on stderr."""
    trace = bool(os.environ.get(TRACE_ENV))
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        args = {k: v for k, v in kwargs.items() if k in impl.argnames}
        try:
            result = impl.function(**args)
        except Exception as exc:
            if trace:
                print(f"[hook] {hook_name}({', '.join(args)}) in {impl.plugin_name}: raised {exc!r}",
                      file=sys.stderr)
            yield impl.plugin_name, None, exc
            continue
        if trace:
            print(f"[hook] {hook_name}({', '.join(args)}) in {impl.plugin_name} -> "
                  f"{_short(result)}", file=sys.stderr)
        yield impl.plugin_name, result, None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def plugin_info(pm: pluggy.PluginManager) -> list[dict]:
    """What `correlate plugins` prints: name, distribution and version, hooks implemented."""
    dists = getattr(pm, "correlate_dists", {})
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda p: p[0]):
        if plugin is None:          # blocked (disabled): listed below
            continue
        dist, version = dists.get(name, (None, None))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append({
            "name": name,
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            "distribution": dist,
            "version": version,
            "hooks": hooks,
            "status": "loaded",
        })
    for f in failed_plugins(pm):
        rows.append({"name": f["name"], "module": f["module"], "distribution": f["distribution"],
                     "version": f["version"], "hooks": [], "status": "failed",
                     "error": f["error"]})
    for name in sorted(getattr(pm, "correlate_disabled", ())):
        dist, version = dists.get(name, (None, None))
        rows.append({"name": name, "module": None, "distribution": dist, "version": version,
                     "hooks": [], "status": "disabled"})
    return rows
