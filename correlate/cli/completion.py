"""Shell completion of the values users type most: `-o DETECTOR.OPTION=VALUE` (from the
detectors the installed plugins load) and `--fields F1,F2,...` (the event keys of
docs/events.md). Wired in with click's `shell_complete`; see README's "Shell completion"."""
from __future__ import annotations

import contextlib
import io

from click.shell_completion import CompletionItem

BOOL_VALUES = ("true", "false")


def _detector_options(ctx) -> dict[str, tuple[object, str]]:
    """{"DETECTOR.OPTION": (default, help)} of every loaded detector, `enabled` included
    (with the context current, so the line's --no-plugin counts)."""
    from ..detector import load_detectors
    from ..plugin_manager import get_plugin_manager
    # a plugin that fails to load says so on stderr: not in the middle of the user's line
    with contextlib.redirect_stderr(io.StringIO()), ctx.scope(cleanup=False):
        detectors, _errors = load_detectors(get_plugin_manager(), {})
    out: dict[str, tuple[object, str]] = {}
    for det in detectors:
        det_id = getattr(det, "id", None)
        if not isinstance(det_id, str):
            continue
        for name, spec in (getattr(det, "options", None) or {}).items():
            out[f"{det_id}.{name}"] = (getattr(spec, "default", None), str(getattr(spec, "help", "")))
        out[f"{det_id}.enabled"] = (True, "run this detector")
    return out


def complete_detector_option(ctx, param, incomplete: str) -> list[CompletionItem]:
    """`-o rpc-un` -> `rpc-unanswered.after_s=`, ...; `-o lock-wait.enabled=` -> true, false."""
    options = _detector_options(ctx)
    target, sep, value = incomplete.partition("=")
    if sep:
        default = options.get(target, (None,))[0]
        if isinstance(default, bool):
            return [CompletionItem(f"{target}={v}") for v in BOOL_VALUES if v.startswith(value.lower())]
        return []
    return [CompletionItem(f"{name}=", help=f"{text} (default {default!r})")
            for name, (default, text) in sorted(options.items()) if name.startswith(incomplete)]


def complete_fields(ctx, param, incomplete: str) -> list[CompletionItem]:
    """`--fields xid,proc` -> `xid,procedure`; `args.` offers the common argument names."""
    from ..outputs.fields import COMMON_NESTED, EVENT_KEYS, NESTED
    head, _, last = incomplete.rpartition(",")
    head = f"{head}," if head or incomplete.startswith(",") else ""
    names = sorted(EVENT_KEYS - set(NESTED)) + [f"{n}." for n in NESTED]
    if "." in last:
        names = [f"{n}.{key}" for n in ("args", "result") for key in COMMON_NESTED] + \
                ["result.op_ret", "cred.pid", "cred.uid", "cred.gid", "cred.lk_owner"]
    return [CompletionItem(head + n) for n in names if n.startswith(last)]
