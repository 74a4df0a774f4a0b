"""The whole plugin API of correlate.

A plugin is a module or object with functions named like the hooks below, decorated with
`correlate.hookimpl`, and registered through the `correlate` entry-point group:

    [project.entry-points.correlate]
    my_detectors = "my_package.detectors"

pluggy passes arguments by name, so an implementation may accept only the arguments it uses;
hooks gain arguments without breaking older plugins. The built-in detectors in
`correlate.plugins` use exactly these hooks. See docs/plugins.md for one example per hook.
"""
import pluggy

hookspec = pluggy.HookspecMarker("correlate")


@hookspec
def correlate_detectors(config, state):
    """Return a list of detector objects (see `correlate.detector.Detector`).

    `state` is the shared Gluster state (`correlate.state.GlusterState`), fed every event
    before any detector sees it: who made a call (`state.actor(call)`: an application or one
    of Gluster's own daemons), capture loss (`state.loss.reply_may_be_lost(call)`), the
    volfiles' replica/disperse sets (`state.bricks`), brick identity (`state.topology.brick(
    "host:port")`, `.volume(...)`, `.peers(...)`), file names by gfid (`state.files.path(gfid)`)
    and the call a reply answers (`state.calls.call_of(reply)`). Keep it and read it; never
    change it (docs/plugins.md, "The shared state").

    `config` is a dict of run options (e.g. `unanswered_after_ns`); a detector's own settings
    are its `options` (see `correlate.detector.Option`), set by users with -o / --config and
    read with `self.option(name)`. Each detector sees the events it wants in time order
    through `observe(event)` and returns findings; `finish()` is called at the end of input.
    A detector that raises is reported by name and disabled.

    A detector says what it needs with a class attribute, `correlate.detector.Wants`:

        wants = Wants(kinds={"rpc.call", "rpc.reply"}, procedures={"SETATTR"},
                      details={"SETATTR"})

    `kinds`/`layers` choose events, `programs`/`procedures` narrow RPC events, `details` names
    the procedures whose `cred`, `args` and `result` it reads (the decoder skips the others;
    op_ret, op_errno and errno_name are always decoded). Omitted fields mean all; a detector
    without `wants` sees every event with every detail. One that acts on time passing also
    defines `due()` (the next time it must act, or None) and `tick(now)` (returns findings)."""


@hookspec
def correlate_probe_specs(options):
    """Return a list of `correlate.probe.catalog.ProbeSpec` to add probe points.

    Each spec names a library, a function, the argument layout to read and whether to probe
    its return; it joins the catalog under its `group` (usable as `--probe GROUP`).

    `options` maps each detector id to its settings in this run, defaults included
    (`{"app-latency": {"after_s": 0.1}}`), so a plugin can have its probes send only what its
    detector will use (`emit="slow"` with the detector's threshold). It is empty where no
    detector runs (`correlate probes`); an implementation may leave the argument out."""


@hookspec
def correlate_outputs():
    """Return a dict mapping an output format name to a writer `write(events, path)`.

    `events` is the merged iterable of event dicts (findings included); the format becomes
    available as `--output NAME=PATH` on `correlate run`, `analyze` and `timeline`."""


@hookspec
def correlate_finding(finding):
    """Called once for every new finding (after folding repeats); return value ignored.

    Use it to forward findings elsewhere (a ticket, a chat message, a metric)."""
