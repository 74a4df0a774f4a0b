"""The BPF C program for a list of resolved probes: probes/uprobe_events.c (the record and
the readers) plus, per probe, a generated entry (enter_N) and, for retprobes, a return
(leave_N), inlined into one attached program per probe address (call_N, ret_N). The return
decides what is sent (every return, only failures with their call, or only slow or failed
calls with their call), follows fds (opens, acknowledged writes, syncs, closes) and reads
errno."""
from __future__ import annotations

import os
from importlib import resources

from .catalog import STRUCT_KINDS, STRUCT_WORDS, WORD_KINDS
from .errors import ProbeError
from .resolve import ResolvedProbe
from .trap_sites import Sites, at_entry, trap_sites
from .wrappers import Fold

KEEP_IN = ("task", "hash")


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
    return {"int": "(s32)rc < 0", "long": "rc < 0", "ptr": "rc == 0"}[retval]


def _register(index: int, sites: Sites | None) -> str:
    """C for argument `index`'s register value where the call's program runs: the register,
    or the copy the function stored on its stack before that point (trap_sites.py)."""
    on_stack = dict(sites.stack_args) if sites else {}
    if index in on_stack:
        return f"stack_word(ctx, {on_stack[index]:#x})"
    return f"PT_REGS_PARM{index}(ctx)"


def _argument_reads(rp: ResolvedProbe, at_return: bool, sites: Sites | None = None) -> tuple[list[str], dict[str, int]]:
    """C statements that fill a record's arguments, and the ints[] slot of each word argument.
    At the entry they read the registers (`sites`: where the call's program runs); at the
    return (a failures-only probe building its call's record) the values the entry kept."""
    reads, slot, slot_of = [], 0, {}
    for arg in rp.arguments:
        reg = _register(arg.index, sites)
        if arg.kind == "str":
            ptr = "entry->str_ptr" if at_return else reg
            if arg.deref:
                hops = "".join(f"\n        p = deref(p, {int(off)});" for off in arg.deref)
                reads.append(f"{{\n        const void *p = (const void *){ptr};{hops}\n"
                             f"        read_str(ev, p);\n    }}")
            else:
                reads.append(f"read_str(ev, (const void *){ptr});")
        elif arg.kind in WORD_KINDS:
            if not at_return:
                reads.append(f"ev->ints[{slot}] = {reg};")
            if arg.kind == "fd":
                reads.append(f"fd_path(ev, ev->ints[{slot}]);")
                slot_of["fd"] = slot
            slot_of.setdefault(arg.name, slot)
            slot += 1
        elif arg.kind in STRUCT_KINDS:
            ptr = "entry->struct_ptr" if at_return else reg
            reads.append(f"read_{arg.kind}(ev, (const void *){ptr});")
    return reads, slot_of


def _keep_entry(i: int, rp: ResolvedProbe, from_record: bool, sites: Sites) -> str:
    """C block that keeps the call (its time, load address and argument registers) until the
    return: copied from the call's record when one was sent, else read from the registers.
    `sites`: where the call's program runs (trap_sites.py)."""
    lines = ["struct entry_t e = {};"]
    lines.append("e.ts = ev->ts;\n    e.caller = ev->caller;" if from_record else "e.ts = bpf_ktime_get_ns();")
    # the library's load address: where the program runs minus that ELF address
    lines.append(f"e.base = (PT_REGS_IP(ctx) - {sites.call:#x}ULL) & ~0xfffULL;")
    slot = 0
    for arg in rp.arguments:
        reg = _register(arg.index, sites)
        if arg.kind in WORD_KINDS:
            lines.append(f"e.ints[{slot}] = {reg};")
            slot += 1
        elif arg.kind == "str":
            lines.append(f"e.str_ptr = {reg};")
        elif arg.kind in STRUCT_KINDS:
            lines.append(f"e.struct_ptr = {reg};")
    lines.append(f"keep_entry({i}, &e);")
    return "\n    ".join(lines)


def _caller_check(rp: ResolvedProbe, wrapped: list[tuple[int, Fold]]) -> str:
    """C that names the wrapper a call came from: its return address (the word on top of the
    stack at the entry) inside a wrapper's code (see wrappers.py)."""
    if not wrapped:
        return ""
    tests = "\n        else ".join(
        f"if (at >= {f.start:#x}ULL && at < {f.end:#x}ULL)\n            ev->caller = {i + 1};"
        for i, f in wrapped)
    return (f"{{\n        u64 ra = 0, at;\n"
            f"        bpf_probe_read_user(&ra, sizeof(ra), (void *)PT_REGS_SP(ctx));\n"
            f"        at = ra - ((PT_REGS_IP(ctx) - {rp.address:#x}ULL) & ~0xfffULL);\n"
            f"        {tests}\n    }}")


def _entry_function(i: int, rp: ResolvedProbe, caller_check: str = "", sites: Sites | None = None) -> str:
    spec = rp.spec
    sites = sites or at_entry(rp.address, spec.retprobe)
    if spec.emit in ("failures", "slow"):
        # nothing is sent at the entry: keep the registers, decide at the return
        return f"""
// {spec.name}: {rp.function} in {rp.path} ({rp.method})
static __always_inline int enter_{i}(struct pt_regs *ctx) {{
    PID_GUARD();
    {_keep_entry(i, rp, from_record=False, sites=sites)}
    return 0;
}}
"""
    reads, _ = _argument_reads(rp, at_return=False, sites=sites)
    if caller_check:
        reads.append(caller_check)
    reads.append("events.perf_submit(ctx, ev, sizeof(*ev));")
    if spec.retprobe:
        reads.append(_keep_entry(i, rp, from_record=True, sites=sites))
    body = "\n    ".join(reads)
    return f"""
// {spec.name}: {rp.function} in {rp.path} ({rp.method})
static __always_inline int enter_{i}(struct pt_regs *ctx) {{
    PID_GUARD();
    struct event_t *ev = begin({i}, KIND_CALL);
    if (!ev)
        return 0;
    {body}
    return 0;
}}
"""


def failures_sent_by_another(i: int, probes: list[ResolvedProbe]) -> bool:
    """Does another probe on the same function send probe i's failed calls already? Then
    an emit="slow" probe i sends only slow calls (`--probe all` has app-latency's io probes
    on the functions whose failures the gfapi probes report: one event each, not two)."""
    rp = probes[i]
    return any(j != i and other.path == rp.path and other.address == rp.address
               and other.spec.retprobe and other.spec.emit != "slow"
               for j, other in enumerate(probes))


def _return_function(i: int, rp: ResolvedProbe, with_errno: bool,
                     failures_elsewhere: bool = False) -> str:
    """The return: follow fds, then send the return (and, for a failures-only probe, first
    the call's record) when the spec's emit mode says so. A return that sends nothing looks
    its entry up and forgets it."""
    from .errno_tls import errno_slot
    spec = rp.spec
    reads, slot_of = _argument_reads(rp, at_return=True)
    fd = f"entry->ints[{slot_of['fd']}]" if "fd" in slot_of else None
    lines = [f"int failed = {_failed(spec.retval)};"]
    lines.append({"all": "int send = 1;", "calls": "int send = failed;", "failures": "int send = failed;",
                  "slow": f"int send = {'' if failures_elsewhere else 'failed || '}(entry && "
                          f"bpf_ktime_get_ns() - entry->ts >= {spec.slow_ns}ULL);"}[spec.emit])
    if spec.fd_role == "opens":
        lines.append("if (!failed && entry)\n        fd_opened(pid, entry, rc);")
    elif spec.fd_role == "writes":
        off = f"(s64)entry->ints[{slot_of['offset']}]" if "offset" in slot_of else "-1"
        lines.append(f"if (!failed && entry)\n        fd_wrote(pid, {fd}, rc, {off}, bpf_ktime_get_ns());")
    syncs = spec.fd_role in ("syncs", "closes")
    closing = int(spec.fd_role == "closes")
    if syncs:
        lines.append(f"if (!send && entry)\n        fd_synced(0, pid, {fd}, failed, {closing});")
    forget = f"forget_entry({i}, entry);"
    lines.append(f"if (!send) {{\n        if (entry)\n            {forget}\n"
                 "        return 0;\n    }")
    if spec.emit in ("failures", "slow"):
        # the call's record goes out first, at its own time (for a slow call the collector
        # drops it when its scan of calls in progress sent the call already)
        body = "\n        ".join(reads)
        lines.append(f"if (entry) {{\n        struct event_t *ev = call_record({i}, entry);\n"
                     f"        if (ev) {{\n            {body}\n"
                     f"            events.perf_submit(ctx, ev, sizeof(*ev));\n        }}\n    }}")
    lines.append(f"struct event_t *ev = begin({i}, KIND_RETURN);")
    lines.append("if (ev) {\n        ev->retval = rc;\n        if (entry) {\n"
                 "            ev->duration_ns = ev->ts - entry->ts;\n"
                 "            ev->caller = entry->caller;\n        } else\n"
                 "            ev->flags |= F_NO_ENTRY;   // attached while the call was already running")
    got = errno_slot(rp.path) if with_errno else None
    if got is not None:
        lines.append(f"    if (failed && entry)\n            read_errno(ev, entry->base, {got:#x}ULL);")
    if syncs:
        lines.append(f"    if (entry)\n            fd_synced(ev, pid, {fd}, failed, {closing});")
    lines.append("    events.perf_submit(ctx, ev, sizeof(*ev));\n    }")
    lines.append(f"if (entry)\n        {forget}")
    body = "\n    ".join(lines)
    return f"""static __always_inline int leave_{i}(struct pt_regs *ctx) {{
    PID_GUARD();
    s64 rc = PT_REGS_RC(ctx);
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    struct entry_t *entry = kept_entry({i});
    {body}
    return 0;
}}
"""


def attach_points(probes: list[ResolvedProbe], folded: dict[int, Fold] | None = None) -> list[list[int]]:
    """The probes grouped by the address they trap at, in catalog order, leaving out the
    wrappers seen at their implementation (`folded`, from wrappers.folds): one uprobe
    program (call_N, and ret_N where any has a return, N the group's first probe) runs every
    probe of a group. Each program attached to an address is another consumer the kernel
    runs at every hit: `--probe all` puts app-latency's io probes on the gfapi fop functions,
    and one program for both cost a call 1.3 us less than two (bench/probe_overhead.py)."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, rp in enumerate(probes):
        if i not in (folded or {}):
            groups.setdefault((rp.path, rp.address), []).append(i)
    return list(groups.values())


def trap_plan(probes: list[ResolvedProbe], folded: dict[int, Fold] | None = None) -> dict[int, Sites]:
    """Group's first probe -> where its programs trap (trap_sites.py): one analysis per
    attach point, for the argument registers any of its probes reads. CORRELATE_TRAP_AT_ENTRY=1
    in the environment keeps every trap at the function's entry."""
    folded = folded or {}
    plan = {}
    at_entry_only = os.environ.get("CORRELATE_TRAP_AT_ENTRY", "") not in ("", "0")
    for group in attach_points(probes, folded):
        members = [probes[i] for i in group]
        needs_return = any(rp.spec.retprobe for rp in members)
        if at_entry_only:
            plan[group[0]] = at_entry(members[0].address, needs_return)
            continue
        plan[group[0]] = trap_sites(
            members[0].path, members[0].address,
            {a.index for rp in members for a in rp.arguments}, needs_return,
            reads_stack_top=any(f.inner in group for f in folded.values()))
    return plan


def sites_by_probe(probes: list[ResolvedProbe], folded: dict[int, Fold],
                   plan: dict[int, Sites]) -> dict[int, Sites]:
    """Each attached probe -> the sites of its attach point (plan is by the group's first)."""
    return {i: plan[group[0]] for group in attach_points(probes, folded) for i in group}


def _attached_functions(group: list[int], probes: list[ResolvedProbe]) -> str:
    """call_N (and ret_N) for one attach point: each probe's entry (and return) in turn."""
    first = group[0]
    calls = "".join(f"\n    enter_{i}(ctx);" for i in group)
    text = f"\nint call_{first}(struct pt_regs *ctx) {{{calls}\n    return 0;\n}}\n"
    returns = [i for i in group if probes[i].spec.retprobe]
    if returns:
        rets = "".join(f"\n    leave_{i}(ctx);" for i in returns)
        text += f"\nint ret_{first}(struct pt_regs *ctx) {{{rets}\n    return 0;\n}}\n"
    return text


def struct_readers() -> str:
    """read_<kind>(ev, p) for every struct kind, from catalog.STRUCT_WORDS."""
    out = []
    for kind, runs in STRUCT_WORDS.items():
        reads, at = [], 0
        for offset, words in runs:
            reads.append(f"bad |= read_words(ev, p, {offset:#x}, {at}, {words});")
            at += words
        body = "\n    ".join(reads)
        out.append(f"""
static __always_inline void read_{kind}(struct event_t *ev, const void *p) {{
    if (!p)
        return;
    int bad = 0;
    {body}
    ev->flags |= bad == 0 ? F_STRUCT : F_STRUCT_FAULT;
}}
""")
    return "".join(out)


def running_calls_defines(probes: list[ResolvedProbe]) -> str:
    """SLOW_PROBES for the task iterator that lists emit="slow" calls in progress (in
    uprobe_events.c; the collector reads it): one check per slow probe, with its slow_ns.
    Nothing without slow probes. With KEEP_IN_HASH the collector lists the hash instead."""
    slow = [(i, rp.spec.slow_ns) for i, rp in enumerate(probes) if rp.spec.emit == "slow"]
    if not slow:
        return ""
    from .btf import BtfError, member_offset
    try:
        pid_off, tgid_off = member_offset("task_struct", "pid"), member_offset("task_struct", "tgid")
    except BtfError as exc:
        raise ProbeError(f"the kernel's BTF does not give task_struct's pid and tgid: {exc}") from None
    checks = " ".join(f"list_running(seq, r, k, {i}, {ns}ULL, now);" for i, ns in slow)
    return (f"#define TASK_PID_OFF {pid_off}\n#define TASK_TGID_OFF {tgid_off}\n"
            f"#define SLOW_PROBES(seq, r, k, now) {checks}\n")


def program_text(probes: list[ResolvedProbe], pid: int | None = None, keep_in: str = "task",
                 folded: dict[int, Fold] | None = None, plan: dict[int, Sites] | None = None) -> str:
    """The common BPF C plus one entry (and return) function per probe; with `pid`, every
    function returns at once in other processes (see PID_GUARD in uprobe_events.c). `keep_in`
    says where a call waits for its return: "task" (task storage) or "hash" (for kernels
    without task storage in uprobe programs; see keep_entry in uprobe_events.c). `folded`
    wrappers get no functions: their implementing probe names the calls from them. `plan`:
    where each attach point traps (trap_plan)."""
    folded = folded or {}
    plan = trap_plan(probes, folded) if plan is None else plan
    sites_of = sites_by_probe(probes, folded, plan)
    if keep_in not in KEEP_IN:
        raise ValueError(f"keep_in must be one of {', '.join(KEEP_IN)}")
    text = resources.files("correlate.probes").joinpath("uprobe_events.c").read_text()
    defines, _why = errno_defines(probes)
    defines += f"#define PROBES {max(len(probes), 1)}\n"
    if keep_in == "hash":
        defines += "#define KEEP_IN_HASH\n"
    else:
        defines += running_calls_defines(probes)
    if pid is not None:
        defines += f"#define FILTER_TGID {int(pid)}\n"
    parts = [defines + text, struct_readers()]
    for i, rp in enumerate(probes):
        if i in folded:
            continue
        wrapped = [(w, f) for w, f in folded.items() if f.inner == i]
        parts.append(_entry_function(i, rp, _caller_check(rp, wrapped), sites_of.get(i)))
        if rp.spec.retprobe:
            parts.append(_return_function(i, rp, bool(defines), failures_sent_by_another(i, probes)))
    for group in attach_points(probes, folded):
        parts.append(_attached_functions(group, probes))
    return "".join(parts)
