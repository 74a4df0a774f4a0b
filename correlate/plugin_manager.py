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
    if os.environ.get(TRACE_ENV):
        def before(hook_name, hook_impls, kwargs):
            names = ", ".join(pm.get_name(i.plugin) or "?" for i in hook_impls)
            print(f"[hook] {hook_name}({', '.join(kwargs)}) -> {names}", file=sys.stderr)

        def after(outcome, hook_name, hook_impls, kwargs):
            pass

        pm.add_hookcall_monitoring(before, after)
    return pm


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
