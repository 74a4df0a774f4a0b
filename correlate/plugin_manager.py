"""The one PluginManager: hook specs, entry-point loading, tracing for plugin authors."""
from __future__ import annotations

import os
import sys
from functools import lru_cache

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "correlate"
TRACE_ENV = "CORRELATE_TRACE_HOOKS"   # set to 1 to print every hook call on stderr


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("correlate")
    pm.add_hookspecs(hookspecs)
    # Built-in detectors are registered by the same entry-point group as third-party ones.
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


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
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda p: p[0]):
        dist = dists.get(id(plugin))
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        rows.append({
            "name": name,
            "module": getattr(plugin, "__name__", type(plugin).__name__),
            "distribution": dist.project_name if dist else None,
            "version": dist.version if dist else None,
            "hooks": hooks,
        })
    return rows
