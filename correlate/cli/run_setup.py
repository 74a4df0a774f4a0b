"""What `run`, `analyze` and `timeline` share: detectors with the user's options and policy
(which run, which findings are suppressed), the correlate_finding hook, and the output
formats plugins add (`--output FORMAT=PATH`)."""
from __future__ import annotations

import os
import tempfile
import tomllib

import click

from ..detector import SEVERITIES, _coerce, configure_detectors, load_detectors
from ..engine.detector_runner import DetectorRunner
from ..state import GlusterState, volume_xml
from ..diagnostics import Diagnostics
from ..engine.finding_policy import POLICY_TABLES, SPEC_FORM, FindingPolicy, from_config, parse_rule
from ..plugin_manager import NO_PLUGIN_KEY, call_each, failed_plugins, get_plugin_manager, not_loaded
from ..sources import read_timeline


class DetectorUsageError(click.BadParameter):
    """A bad detector name, option, config file or suppression rule: one line, exit 2."""

    def format_message(self) -> str:
        return f"{self.param_hint}: {self.message}" if self.param_hint else self.message

    def show(self, file=None) -> None:
        from ..outputs.terminal import safe_text     # a config file's text: escaped
        click.echo(f"correlate: {safe_text(self.format_message(), 2000)}", err=True)


def detector_options(f):
    """-o DETECTOR.KEY=VALUE and --config FILE, the same on every command that detects."""
    f = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                     help="TOML file of detector options: a table per detector, e.g. "
                          "[rpc-unanswered] after_s = 30 (see `correlate detectors`); "
                          "[detectors] enable/disable lists; [[suppress]] rules.")(f)
    from .completion import complete_detector_option
    return click.option("-o", "--option", "option_specs", multiple=True,
                        metavar="DETECTOR.KEY=VALUE", shell_complete=complete_detector_option,
                        help="Set a detector option (listed by `correlate plugins`); "
                             "overrides --config. Repeatable.")(f)


def _read_topology(ctx, param, specs):
    if not specs:
        return []
    try:
        return volume_xml.read(specs)
    except volume_xml.TopologyError as exc:
        raise click.BadParameter(str(exc), param_hint="--topology") from None


def topology_option(f):
    """--topology FILE|live: bricks, ports and replica sets for captures that start after the
    clients connected (no GETSPEC, PORTBYBRICK or SETVOLUME in them)."""
    return click.option("--topology", "topology", multiple=True, metavar="FILE|live",
                        callback=_read_topology,
                        help="Brick names, volumes and replica/disperse sets from `gluster "
                             "volume info --xml` and/or `gluster volume status --xml` saved "
                             "in FILE (both outputs in one file, or two --topology); `live` "
                             f"asks this host's glusterd ({volume_xml.LIVE_TIMEOUT_S} s at "
                             "most). Repeatable. What the capture shows wins.")(f)


FAIL_ON_LEVELS = (*SEVERITIES, "never")


def reaches(severity, level: str) -> bool:
    """Whether a finding of `severity` is at or above --fail-on `level`."""
    if level not in SEVERITIES or severity not in SEVERITIES:
        return False
    return SEVERITIES.index(severity) >= SEVERITIES.index(level)


def fail_on_option(f):
    """--fail-on: which findings make the exit code 1 (correlate.exit_codes)."""
    return click.option("--fail-on", type=click.Choice(FAIL_ON_LEVELS, case_sensitive=False),
                        default="never", show_default=True, metavar="LEVEL",
                        help="Exit with 1 when a finding at or above LEVEL was found "
                             f"({', '.join(FAIL_ON_LEVELS)}): for scripts and CI jobs.")(f)


def _no_plugin(ctx, _param, names):
    """--no-plugin: kept in the context before any plugin loads (the option is eager), then
    checked against the installed plugins."""
    if not names:
        return
    ctx.find_root().meta[NO_PLUGIN_KEY] = frozenset(names)
    if ctx.resilient_parsing:       # shell completion: nothing to check or load
        return
    pm = get_plugin_manager()
    unknown = sorted(getattr(pm, "correlate_unknown_disabled", ()))
    if unknown:
        from ..plugin_manager import plugin_info
        known = ", ".join(sorted({r["name"] for r in plugin_info(pm)}))
        raise DetectorUsageError(f"no plugin {unknown[0]!r}; plugins: {known}",
                                 param_hint="--no-plugin")


def selection_options(f):
    """--detector, --no-detector, --no-plugin and --suppress: which detectors run, which
    findings show."""
    f = click.option("--no-plugin", multiple=True, metavar="NAME", expose_value=False,
                     is_eager=True, callback=_no_plugin,
                     help="Do not load plugin NAME at all (its detectors, outputs, probes and "
                          "hooks); `correlate plugins` lists the names. Repeatable; "
                          "CORRELATE_DISABLE_PLUGINS=NAME,... does it for every command.")(f)
    f = click.option("--suppress", "suppress_specs", multiple=True, metavar="SPEC",
                     help=f"Do not show findings matching SPEC, {SPEC_FORM} (e.g. "
                          "stale-handle:brick=127.0.0.2:/srv/b1); they are counted on stderr. "
                          "Repeatable.")(f)
    f = click.option("--no-detector", "skip_detectors", multiple=True, metavar="NAME",
                     help="Do not run detector NAME nor request its probes (as -o "
                          "NAME.enabled=false). Repeatable.")(f)
    return click.option("--detector", "only_detectors", multiple=True, metavar="NAME",
                        help="Run only detector NAME (repeatable); `correlate detectors` "
                             "lists them.")(f)


def _read_config(config_path: str) -> dict:
    try:
        with open(config_path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DetectorUsageError(f"{config_path}: {exc}", param_hint="--config") from None
    except UnicodeDecodeError as exc:
        raise DetectorUsageError(f"{config_path}: not UTF-8 text (byte {exc.start}): a TOML "
                                 "file is UTF-8", param_hint="--config") from None
    except RecursionError:     # tomllib recurses per nested array or table: `a = [[[[...`
        raise DetectorUsageError(f"{config_path}: values nested too deeply to be a detector "
                                 "configuration", param_hint="--config") from None


def parse_detector_options(specs, config_path: str | None) -> dict[str, dict]:
    """{detector id: {option: value}} from a --config file, then -o values over it."""
    values: dict[str, dict] = {}
    if config_path:
        for det_id, opts in _read_config(config_path).items():
            if det_id in POLICY_TABLES:
                continue        # [detectors] and [[suppress]]: parse_policy reads them
            if not isinstance(opts, dict):
                raise DetectorUsageError(f"{config_path}: {det_id!r} must be a table "
                                         f"([{det_id}] then KEY = VALUE lines)", param_hint="--config")
            values.setdefault(det_id, {}).update(opts)
    for spec in specs:
        target, sep, value = spec.partition("=")
        det_id, dot, key = target.rpartition(".")
        if not sep or not dot or not det_id or not key:
            raise DetectorUsageError(f"{spec!r}: expected DETECTOR.KEY=VALUE "
                                     "(e.g. rpc-unanswered.after_s=30)", param_hint="-o")
        values.setdefault(det_id, {})[key] = value
    return values


def parse_policy(config_path: str | None, only=(), skip=(), suppress=()) -> FindingPolicy:
    """The --config file's [detectors] and [[suppress]], then the command line's: --detector
    replaces the file's `enable`, --no-detector and --suppress add to the file's."""
    enable, disable, rules = None, [], []
    if config_path:
        try:
            enable, disable, rules = from_config(_read_config(config_path), config_path)
        except ValueError as exc:
            raise DetectorUsageError(str(exc), param_hint="--config") from None
    try:
        rules += [parse_rule(spec) for spec in suppress]
    except ValueError as exc:
        raise DetectorUsageError(str(exc), param_hint="--suppress") from None
    return FindingPolicy(only=list(only) if only else enable, disabled=[*disable, *skip], rules=rules)


def _take_enabled(options: dict[str, dict]) -> tuple[dict[str, dict], set[str]]:
    """Every detector's implicit option `enabled`, out of the options: (the rest, ids off)."""
    rest, off = {}, set()
    for det_id, chosen in options.items():
        chosen = dict(chosen)
        if "enabled" in chosen and not _coerce(chosen.pop("enabled"), True, f"{det_id}.enabled"):
            off.add(det_id)
        rest[det_id] = chosen
    return rest, off


def _loaded_only(options: dict[str, dict], detectors: list, pm, errors: list[dict]) -> dict[str, dict]:
    """The options of detectors that exist. While some plugin is not running (it failed to
    import or its hook raised, or it is disabled), an unknown detector may well be one of
    its own: its options are dropped with a warning instead of refusing the whole run.
    With every plugin running, an unknown name is a typo and configure_detectors says so."""
    missing = sorted(set(not_loaded(pm)) | {e.get("detector") for e in errors if e.get("detector")})
    if not missing:
        return options
    loaded = {getattr(d, "id", None) for d in detectors}
    kept = {}
    for det_id, chosen in options.items():
        if det_id in loaded:
            kept[det_id] = chosen
            continue
        from ..outputs.terminal import safe_text     # the user's text: escaped
        names = ", ".join(f"{det_id}.{k}" for k in chosen)
        click.echo(f"correlate: warning: options {safe_text(names, 300)} ignored: no detector "
                   f"{safe_text(det_id, 100)!r} is loaded (plugins not running: "
                   f"{', '.join(missing)})", err=True)
    return kept


def make_runner(config: dict, options: dict[str, dict],
                policy: FindingPolicy | None = None, topology=()) -> DetectorRunner:
    """The detectors the policy lets run, configured, with new findings passed to
    correlate_finding; `runner.policy` suppresses the findings it names. `topology`: the
    volumes --topology gave (volume_xml.Volume), seeded into the shared state."""
    pm = get_plugin_manager()
    state = GlusterState()
    state.seed_topology(topology)
    origins: dict[str, str] = {}
    detectors, errors = load_detectors(pm, config, state, origins=origins)
    try:
        options = _loaded_only(options, detectors, pm, errors)
        options, off = _take_enabled(options)
        policy = (policy or FindingPolicy()).disabling(off)
        policy.bind(origins)
        configure_detectors(detectors, options)
    except ValueError as exc:
        raise DetectorUsageError(str(exc)) from None

    # plugins that failed to import, and notifiers that raised: the exit code says so
    plugin_failures = [f["name"] for f in failed_plugins(pm)]

    def notify(finding):
        for name, _result, exc in call_each(pm, "correlate_finding", finding=finding):
            if exc is not None:   # a notifier's bug is reported, the run goes on
                click.echo(f"correlate: plugin {name}: correlate_finding failed: {exc}", err=True)
                plugin_failures.append(name)

    runner = DetectorRunner(policy.select(detectors), on_new_finding=notify, load_errors=errors,
                            state=state)
    runner.policy = policy
    runner.plugin_failures = plugin_failures
    return runner


def output_writers(outputs) -> list[tuple[str, callable, str]]:
    """Resolve FORMAT=PATH against the formats plugins provide, before the run starts."""
    if not outputs:
        return []
    formats = {}
    for name, provided, exc in call_each(get_plugin_manager(), "correlate_outputs"):
        if exc is not None:
            click.echo(f"correlate: plugin {name}: correlate_outputs failed: {exc}", err=True)
        formats.update(provided or {})
    writers = []
    for spec in outputs:
        name, sep, path = spec.partition("=")
        if not sep or name not in formats:
            known = ", ".join(sorted(formats)) or "none (no plugin provides one)"
            raise click.BadParameter(f"{spec!r}: expected FORMAT=PATH with FORMAT one of: {known}",
                                     param_hint="--output")
        writers.append((name, formats[name], path))
    return writers


def write_outputs(writers, timeline_path: str) -> bool:
    """Plugin writers read the merged timeline back, so the run itself stays streaming.
    False when one failed (the others are still written)."""
    ok = True
    for name, write, path in writers:
        with open(timeline_path, "rb") as f:
            try:
                write(read_timeline(f, timeline_path, Diagnostics(timeline_path)), path)
            except Exception as exc:   # a plugin's writer: its path and its words, one line
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                from ..outputs.terminal import safe_text    # the path and a plugin's words
                click.echo(f"correlate: {safe_text(f'cannot write {path} ({name} output): {why}', 2000)}",
                           err=True)
                ok = False
                continue
        click.echo(f"correlate: {name} output written to {path}", err=True)
    return ok


def timeline_path(timeline: str | None, writers) -> tuple[str | None, str | None]:
    """The timeline to write: the user's, or a temporary one when only outputs need it."""
    if timeline or not writers:
        return timeline, None
    fd, tmp = tempfile.mkstemp(prefix="correlate-", suffix=".jsonl")
    os.close(fd)
    return tmp, tmp
