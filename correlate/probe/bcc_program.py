"""The BPF C program for a list of resolved probes: probes/uprobe_events.c (the record and
the readers) plus one generated entry function and, for retprobes, one return function per
probe. The return function decides what is sent (every return, only failures with their call,
or only slow or failed calls with their call), follows fds (opens, acknowledged writes, syncs, closes) and reads errno."""
from __future__ import annotations

from importlib import resources

from .catalog import STRUCT_KINDS, WORD_KINDS
from .errors import ProbeError
from .resolve import ResolvedProbe


def errno_defines(probes: list[ResolvedProbe]) -> tuple[str, str]:
    """The #defines read_errno() needs, or ("", why errno cannot be read here)."""
    from .errno_tls import LIBC, libc_errno
    from .resolve import find_library
    try:
        libc, why = libc_errno(find_library(LIBC))
    except ProbeError as exc:
        return "", str(exc)
    if libc is None:
        return "", why
    return (f"#define FSBASE_OFF {libc.fsbase_off}\n#define ERRNO_FN_VADDR {libc.fn_vaddr:#x}ULL\n"
            f"#define ERRNO_FN_CODE {libc.fn_code:#x}ULL\n"
            f"#define ERRNO_TPOFF_VADDR {libc.tpoff_vaddr:#x}ULL\n"), ""


def _failed(retval: str) -> str:
    """C test of the return register for a failed call."""
    return {"int": "(s32)ev->retval < 0", "long": "ev->retval < 0", "ptr": "ev->retval == 0"}[retval]


def _return_function(i: int, rp: ResolvedProbe, slot_of: dict[str, int], with_errno: bool) -> str:
    from .errno_tls import errno_slot
    spec = rp.spec
    lines = [f"int failed = {_failed(spec.retval)};"]
    got = errno_slot(rp.path) if with_errno else None
    if got is not None:
        lines.append(f"if (failed && entry)\n        read_errno(ev, entry->base, {got:#x}ULL);")
    fd = f"entry->ints[{slot_of['fd']}]" if "fd" in slot_of else None
    if spec.fd_role == "opens":
        lines.append("if (!failed && entry)\n        fd_opened(entry, ev->retval);")
    elif spec.fd_role == "writes":
        off = f"(s64)entry->ints[{slot_of['offset']}]" if "offset" in slot_of else "-1"
        lines.append(f"if (!failed && entry)\n        fd_wrote(ev->pid, {fd}, ev->retval, {off}, ev->ts);")
    elif spec.fd_role in ("syncs", "closes"):
        closing = int(spec.fd_role == "closes")
        lines.append(f"if (entry)\n        fd_synced(ev, {fd}, failed, {closing});")
    if spec.emit == "failures":
        # the call's record goes out first, at its own time, only when the call failed
        lines.append("if (failed) {\n        if (entry)\n"
                     "            events.perf_submit(ctx, entry, sizeof(*entry));\n"
                     "        events.perf_submit(ctx, ev, sizeof(*ev));\n    }")
    elif spec.emit == "slow":
        # a call that took slow_ns or more, or failed: its record (at its own time), then the
        # return. The collector may have sent the record already, while the call ran, and
        # drops this copy (same tid, probe and entry time).
        lines.append(f"if (failed || (entry && ev->duration_ns >= {spec.slow_ns}ULL)) {{\n"
                     "        if (entry)\n"
                     "            events.perf_submit(ctx, entry, sizeof(*entry));\n"
                     "        events.perf_submit(ctx, ev, sizeof(*ev));\n    }")
    else:
        lines.append("events.perf_submit(ctx, ev, sizeof(*ev));")
    body = "\n    ".join(lines)
    return f"""int ret_{i}(struct pt_regs *ctx) {{
    struct event_t *ev = begin({i}, KIND_RETURN);
    if (!ev)
        return 0;
    ev->retval = PT_REGS_RC(ctx);
    u64 key = ((u64)ev->tid << 32) | {i};
    struct event_t *entry = entries.lookup(&key);
    if (entry)
        ev->duration_ns = ev->ts - entry->ts;
    else
        ev->flags |= F_NO_ENTRY;   // attached while the call was already running
    {body}
    if (entry)
        entries.delete(&key);
    return 0;
}}
"""


def program_text(probes: list[ResolvedProbe]) -> str:
    """The common BPF C plus one entry (and return) function per probe."""
    text = resources.files("correlate.probes").joinpath("uprobe_events.c").read_text()
    defines, _why = errno_defines(probes)
    parts = [defines + text]
    for i, rp in enumerate(probes):
        reads, slot, slot_of = [], 0, {}
        for arg in rp.arguments:
            reg = f"PT_REGS_PARM{arg.index}(ctx)"
            if arg.kind == "str" and arg.deref:
                hops = "".join(f"\n        p = deref(p, {int(off)});" for off in arg.deref)
                reads.append(f"{{\n        const void *p = (const void *){reg};{hops}\n"
                             f"        read_str(ev, p);\n    }}")
            elif arg.kind == "str":
                reads.append(f"read_str(ev, (const void *){reg});")
            elif arg.kind in WORD_KINDS:
                reads.append(f"ev->ints[{slot}] = {reg};")
                if arg.kind == "fd":
                    reads.append(f"fd_path(ev, ev->ints[{slot}]);")
                    slot_of["fd"] = slot
                slot_of.setdefault(arg.name, slot)
                slot += 1
            elif arg.kind in STRUCT_KINDS:
                reads.append(f"read_{arg.kind}(ev, (const void *){reg});")
        if rp.spec.retprobe:
            # the library's load address: the probe's address minus its ELF address
            reads.append(f"ev->base = (PT_REGS_IP(ctx) - {rp.address:#x}ULL) & ~0xfffULL;")
            reads.append("remember_entry(ev);")
        if rp.spec.emit == "all":
            reads.append("events.perf_submit(ctx, ev, sizeof(*ev));")
        body = "\n    ".join(reads)
        parts.append(f"""
// {rp.spec.name}: {rp.function} in {rp.path} ({rp.method})
int call_{i}(struct pt_regs *ctx) {{
    struct event_t *ev = begin({i}, KIND_CALL);
    if (!ev)
        return 0;
    {body}
    return 0;
}}
""")
        if rp.spec.retprobe:
            parts.append(_return_function(i, rp, slot_of, bool(defines)))
    return "".join(parts)
