"""What `run`, `analyze` and `timeline` share: detectors with the user's options and the
correlate_finding hook, and the output formats plugins add (`--output FORMAT=PATH`)."""
from __future__ import annotations

import os
import tempfile
import tomllib

import click

from .detector import configure_detectors, load_detectors
from .detector_runner import DetectorRunner
from .state import GlusterState
from .diagnostics import Diagnostics
from .plugin_manager import call_each, get_plugin_manager
from .sources import read_timeline


def detector_options(f):
    """-o DETECTOR.KEY=VALUE and --config FILE, the same on every command that detects."""
    f = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                     help="TOML file of detector options: a table per detector, e.g. "
                          "[rpc-unanswered] after_s = 30 (see `correlate plugins`).")(f)
    return click.option("-o", "--option", "option_specs", multiple=True,
                        metavar="DETECTOR.KEY=VALUE",
                        help="Set a detector option (listed by `correlate plugins`); "
                             "overrides --config. Repeatable.")(f)


def parse_detector_options(specs, config_path: str | None) -> dict[str, dict]:
    """{detector id: {option: value}} from a --config file, then -o values over it."""
    values: dict[str, dict] = {}
    if config_path:
        try:
            with open(config_path, "rb") as f:
                table = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise click.BadParameter(f"{config_path}: {exc}", param_hint="--config") from None
        for det_id, opts in table.items():
            if not isinstance(opts, dict):
                raise click.BadParameter(f"{config_path}: {det_id!r} must be a table "
                                         f"([{det_id}] then KEY = VALUE lines)", param_hint="--config")
            values.setdefault(det_id, {}).update(opts)
    for spec in specs:
        target, sep, value = spec.partition("=")
        det_id, dot, key = target.rpartition(".")
        if not sep or not dot or not det_id or not key:
            raise click.BadParameter(f"{spec!r}: expected DETECTOR.KEY=VALUE "
                                     "(e.g. rpc-unanswered.after_s=30)", param_hint="-o")
        values.setdefault(det_id, {})[key] = value
    return values


def make_runner(config: dict, options: dict[str, dict]) -> DetectorRunner:
    """Every plugin's detectors, configured, with new findings passed to correlate_finding."""
    pm = get_plugin_manager()
    state = GlusterState()
    detectors, errors = load_detectors(pm, config, state)
    try:
        configure_detectors(detectors, options)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="-o/--config") from None

    def notify(finding):
        for name, _result, exc in call_each(pm, "correlate_finding", finding=finding):
            if exc is not None:   # a notifier's bug is reported, the run goes on
                click.echo(f"correlate: plugin {name}: correlate_finding failed: {exc}", err=True)

    return DetectorRunner(detectors, on_new_finding=notify, load_errors=errors, state=state)


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
            except Exception as exc:
                click.echo(f"correlate: output format {name} failed: {exc}", err=True)
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
