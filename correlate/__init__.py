"""correlate: GlusterFS wire traffic and process probes on one timeline, with detectors."""

__version__ = "0.1.0"

# Before any submodule loads: decides whether the compiled hot path or its source runs.
from . import hotpath as _hotpath  # noqa: E402,F401

from pluggy import HookimplMarker as _HookimplMarker

# Plugins decorate their hook implementations with `@correlate.hookimpl`.
hookimpl = _HookimplMarker("correlate")
