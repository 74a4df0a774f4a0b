"""Where a probe traps: the function's first instruction, unless the kernel would
single-step it there.

A uprobe puts an int3 on an instruction. At the trap the kernel emulates a few
instructions itself (relative jumps, conditional jumps and calls, and `push`); any other
one it copies out of line and single-steps, which is a second exception. On the lab's VM a
call and return cost 26-32 us single-stepped, 1.1 us trapped at two emulated branches
(bench/probe_overhead.py). gcc starts many small gfapi functions with `sub $N,%rsp`
(glfs_read, glfs_write, glfs_pread, glfs_pwrite) or with a register cleared before a tail
jump (glfs_posix_lock).

For such a function the probe traps elsewhere, where its code (read with capstone) proves
it sees the same thing:

* the call: at the first emulated branch of the straight-line code the function starts
  with, when every argument the probe reads is still in its register there or in a copy
  the function stored on its stack (glfs_pread stores its count and reuses %rdx), and
  nothing before it writes memory outside the function's own stack frame;
* the return: if nothing before that branch moved the stack pointer, the return address is
  still on top of the stack and a uretprobe goes on the branch, as it would on the entry.
  Otherwise a plain uprobe on an emulated branch that every path from the call site to a
  `ret` passes exactly once and after which nothing writes %rax: the return value is in
  %rax there (gcc's stack-protector check before the epilogue is such a branch).

Whatever the analysis cannot prove keeps the entry trap and its uretprobe: an indirect or
outward jump before the return, a loop through a site, a jump into the function from
elsewhere in the library (gcc's .cold parts), a probe that reads the stack at the entry
(wrappers.py), a library too large to search, or no capstone.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .elf_functions import function_span
from .elfsym import SHT_DYNSYM, SHT_SYMTAB, STT_FUNC, ElfError, load_elf

MAX_FUNCTION_BYTES = 64 * 1024    # bounds the decoding of one function
MAX_LIBRARY_BYTES = 32 << 20      # bounds the search for jumps into it (libc: 2 MB, 0.5 s)
ARG_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
CALLER_SAVED = frozenset({"rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "rsp"})

# every name of a general register -> its 64-bit name
_FAMILIES = {
    "rax": "eax ax al ah", "rbx": "ebx bx bl bh", "rcx": "ecx cx cl ch", "rdx": "edx dx dl dh",
    "rsi": "esi si sil", "rdi": "edi di dil", "rsp": "esp sp spl", "rbp": "ebp bp bpl",
    **{f"r{n}": f"r{n}d r{n}w r{n}b" for n in range(8, 16)},
}
FAMILY = {alias: wide for wide, names in _FAMILIES.items() for alias in (wide, *names.split())}


@dataclass(frozen=True)
class Sites:
    """Where one attach point's programs go: the call's program at `call`; the return's at
    `ret` (None: no return program), as a uretprobe or, when `ret_reads_rax`, as a plain
    uprobe that reads the return value from %rax. `stack_args`: (argument index, offset from
    %rsp at `call`) of arguments read from the function's stack copy instead of their
    register. `why` says why they moved."""
    call: int
    ret: int | None
    ret_reads_rax: bool = False
    why: str = ""
    stack_args: tuple[tuple[int, int], ...] = ()

    @property
    def addresses(self) -> tuple[int, ...]:
        """The distinct addresses trapped at."""
        return tuple(dict.fromkeys(a for a in (self.call, self.ret) if a is not None))


@dataclass(frozen=True)
class Insn:
    address: int
    next: int
    kind: str              # other | jmp | jcc | call | ret | ijmp (indirect jump) | stop
    target: int | None     # direct branch target
    writes: frozenset      # 64-bit register names written (a call: the caller-saved ones)
    writes_far: bool       # writes memory through anything but %rsp
    emulated: bool         # the kernel emulates it at a uprobe (no single-step)
    text: str
    stack_delta: int | None = 0        # what it adds to %rsp (None: a change not followed)
    stack_writes: tuple | None = ()    # [lo, hi) it writes relative to %rsp before it (None: unknown)
    store: tuple[str, int] | None = None   # `mov qword [rsp+d], reg`: (reg, d)


def at_entry(address: int, needs_return: bool) -> Sites:
    return Sites(address, address if needs_return else None)


def trap_sites(path: str, address: int, arg_indexes: set[int], needs_return: bool,
               reads_stack_top: bool = False) -> Sites:
    """The sites for probes on the function at `address` in `path` that read the argument
    registers `arg_indexes` (1-based) at the call, with a return program if `needs_return`;
    `reads_stack_top`: the call's program reads the return address at the stack pointer."""
    entry = at_entry(address, needs_return)
    if any(not 1 <= i <= len(ARG_REGISTERS) for i in arg_indexes):
        return entry    # an argument on the stack: read relative to the entry's %rsp
    code = decode_function(path, address)
    if not code or code[0].emulated or _jumped_into(path, code):
        return entry
    in_register = set(arg_indexes)
    copies: dict[int, int] = {}    # argument index -> its stack copy, relative to the entry's %rsp
    delta = 0                      # %rsp relative to the entry's
    for ins in code:
        if ins.emulated:
            break
        if ins.kind != "other" or ins.writes_far or ins.stack_delta is None or ins.stack_writes is None:
            return entry
        for lo, hi in ins.stack_writes:     # a write over a saved copy loses it
            copies = {i: at for i, at in copies.items() if not (at < delta + hi and delta + lo < at + 8)}
        if ins.store is not None:
            reg, disp = ins.store
            copies.update({i: delta + disp for i in in_register if ARG_REGISTERS[i - 1] == reg})
        in_register -= {i for i in in_register if ARG_REGISTERS[i - 1] in ins.writes}
        delta += ins.stack_delta
    else:
        return entry
    if in_register | set(copies) != set(arg_indexes):
        return entry    # an argument the probe reads is gone by then
    stack_args = tuple(sorted((i, copies[i] - delta) for i in set(arg_indexes) - in_register))
    moved_stack = delta != 0
    call = ins
    first = f"{code[0].text} at the entry is single-stepped"
    if not moved_stack:
        return Sites(call.address, call.address if needs_return else None, False,
                     f"{first}; traps at +{call.address - address:#x} ({call.text}) with the "
                     "return address still on top of the stack" + _copied(stack_args), stack_args)
    if reads_stack_top:
        return entry
    if not needs_return:
        return Sites(call.address, None, False, f"{first}; traps at +{call.address - address:#x} "
                     f"({call.text})" + _copied(stack_args), stack_args)
    ret = _return_site(code, call)
    if ret is None:
        return entry
    return Sites(call.address, ret.address, True,
                 f"{first}; the call traps at +{call.address - address:#x} ({call.text}), the "
                 f"return at +{ret.address - address:#x} ({ret.text}) with its value in %rax"
                 + _copied(stack_args), stack_args)


def _copied(stack_args: tuple[tuple[int, int], ...]) -> str:
    return "".join(f"; argument {i} read from its copy at {off:#x}(%rsp)" for i, off in stack_args)


class _Unknown(Exception):
    """Control flow this analysis does not follow."""


def _successors(ins: Insn, by_address: dict[int, Insn], end: int) -> list[int | str]:
    """Addresses control goes to after `ins`; "ret" for a return, "end" where it stops
    (falls off the function: after a call that does not return)."""
    def inside(a: int) -> int | str:
        if a == end:
            return "end"
        if a not in by_address:
            raise _Unknown(f"{ins.text} at {ins.address:#x} goes to {a:#x}, outside its code")
        return a
    if ins.kind == "ret":
        return ["ret"]
    if ins.kind == "stop":
        return ["end"]
    if ins.kind == "ijmp" or (ins.kind in ("jmp", "jcc") and ins.target is None):
        raise _Unknown(f"{ins.text} at {ins.address:#x}")
    if ins.kind == "jmp":
        return [inside(ins.target)]
    if ins.kind == "jcc":
        return [inside(ins.next), inside(ins.target)]
    return [inside(ins.next)]


def _return_site(code: tuple[Insn, ...], call: Insn) -> Insn | None:
    """An emulated jump that every path from `call` to a `ret` passes exactly once, with no
    write to %rax after it on any path that returns."""
    by_address = {ins.address: ins for ins in code}
    try:
        succ = {ins.address: _successors(ins, by_address, code[-1].next) for ins in code}
    except _Unknown:
        return None
    from_call = _reach(succ, succ[call.address])
    if any(isinstance(a, int) and a <= call.address for a in from_call):
        return None     # a loop back to the call site or the code before it
    returning = _returning(succ)
    for j in sorted((a for a in from_call if isinstance(a, int)), reverse=True):
        ins = by_address[j]
        if not ins.emulated or ins.kind not in ("jmp", "jcc"):
            continue
        if "ret" in _reach(succ, succ[call.address], blocked=j):
            continue    # a path returns without passing j
        after = _reach(succ, succ[j])
        if j in after:
            continue    # j in a loop: one call's return would be reported twice
        if any("rax" in by_address[a].writes for a in after & returning):
            continue
        return ins
    return None


def _reach(succ: dict, starts, blocked: int | None = None) -> set:
    """Addresses (and "ret", "end") reachable from `starts`, not going on past `blocked`."""
    seen, todo = set(), list(starts)
    while todo:
        a = todo.pop()
        if a in seen:
            continue
        seen.add(a)
        if isinstance(a, int) and a != blocked:
            todo.extend(succ.get(a, ()))
    return seen


def _returning(succ: dict) -> set:
    """Addresses from which a `ret` can be reached."""
    preds: dict = {}
    for a, nexts in succ.items():
        for n in nexts:
            preds.setdefault(n, []).append(a)
    return _reach(preds, preds.get("ret", [])) - {"ret", "end"}


@lru_cache(maxsize=64)
def decode_function(path: str, address: int) -> tuple[Insn, ...]:
    """The function's instructions, decoded in a linear sweep of its symbol's (or FDE's)
    span; () without capstone, without a known span or on code it cannot decode."""
    try:
        import capstone
    except ImportError:
        return ()
    try:
        elf = load_elf(path)
        span = function_span(elf, address, MAX_FUNCTION_BYTES)
        if span is None:
            return ()
        code = elf.read_vaddr(span[0], span[1] - span[0])
    except (ElfError, OSError):
        return ()
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    out, at = [], span[0]
    try:
        for ins in md.disasm(code, span[0]):
            if ins.address != at:
                return ()
            out.append(_insn(md, ins, capstone))
            at = ins.address + ins.size
    except capstone.CsError:
        return ()
    return tuple(out) if at == span[1] else ()


def _insn(md, ins, capstone) -> Insn:
    x86 = capstone.x86
    raw = bytes(ins.bytes)
    groups = set(ins.groups)
    target = None
    if ins.operands and ins.operands[0].type == x86.X86_OP_IMM:
        target = ins.operands[0].imm
    if x86.X86_GRP_RET in groups:
        kind = "ret"
    elif x86.X86_GRP_CALL in groups:
        kind = "call"
    elif ins.id == x86.X86_INS_JMP:
        kind = "jmp" if target is not None else "ijmp"
    elif x86.X86_GRP_JUMP in groups:
        kind = "jcc"
    elif ins.id in (x86.X86_INS_HLT, x86.X86_INS_UD2, x86.X86_INS_INT3):
        kind = "stop"
    elif x86.X86_GRP_INT in groups or x86.X86_GRP_IRET in groups:
        kind = "ijmp"   # control leaves in ways this analysis does not follow
    else:
        kind = "other"
    _read, written = ins.regs_access()
    writes = {FAMILY.get(md.reg_name(r), md.reg_name(r)) for r in written}
    if kind == "call":
        writes |= CALLER_SAVED
    writes_far = any(op.type == x86.X86_OP_MEM and op.access & capstone.CS_AC_WRITE
                     and FAMILY.get(md.reg_name(op.mem.base) if op.mem.base else "") != "rsp"
                     for op in ins.operands)
    # string and other implicit memory writes (stos, movs) show no memory operand
    writes_far |= ins.id in (x86.X86_INS_STOSB, x86.X86_INS_STOSW, x86.X86_INS_STOSD,
                             x86.X86_INS_STOSQ, x86.X86_INS_MOVSB, x86.X86_INS_MOVSW,
                             x86.X86_INS_MOVSQ) or (ins.id == x86.X86_INS_MOVSD and not ins.operands)
    delta, stack_writes, store = _stack_effects(md, ins, capstone, writes)
    return Insn(ins.address, ins.address + ins.size, kind, target, frozenset(writes), writes_far,
                kernel_emulates(raw), f"{ins.mnemonic} {ins.op_str}".strip(), delta, stack_writes,
                store)


def _stack_effects(md, ins, capstone, writes: set) -> tuple[int | None, tuple | None, tuple | None]:
    """What the instruction adds to %rsp, the [lo, hi) it writes relative to %rsp before it,
    and, for `mov qword ptr [rsp + d], reg`, (reg, d)."""
    x86 = capstone.x86
    ops = ins.operands
    spans, store = [], None
    for op in ops:
        if op.type == x86.X86_OP_MEM and op.access & capstone.CS_AC_WRITE \
                and FAMILY.get(md.reg_name(op.mem.base) if op.mem.base else "") == "rsp":
            if op.mem.index:
                return 0, None, None
            spans.append((op.mem.disp, op.mem.disp + op.size))
    if ins.id == x86.X86_INS_MOV and len(ops) == 2 and spans and ops[1].type == x86.X86_OP_REG \
            and ops[0].size == 8:
        store = (FAMILY.get(md.reg_name(ops[1].reg), ""), ops[0].mem.disp)
    if "rsp" not in writes:
        return 0, tuple(spans), store
    if ins.id == x86.X86_INS_PUSH:
        return -8, ((-8, 0),), None
    if ins.id == x86.X86_INS_POP:
        return 8, tuple(spans), None
    if ins.id in (x86.X86_INS_SUB, x86.X86_INS_ADD) and len(ops) == 2 and ops[0].type == x86.X86_OP_REG \
            and FAMILY.get(md.reg_name(ops[0].reg)) == "rsp" and ops[1].type == x86.X86_OP_IMM:
        return (-ops[1].imm if ins.id == x86.X86_INS_SUB else ops[1].imm), tuple(spans), None
    return None, tuple(spans), None


def kernel_emulates(raw: bytes) -> bool:
    """Does the x86 uprobe code emulate this instruction (arch/x86/kernel/uprobes.c:
    branch_setup_xol_ops for relative jumps, conditional jumps and calls; push_setup_xol_ops
    for `push reg`) instead of single-stepping it? Only unprefixed encodings."""
    if not raw:
        return False
    b0 = raw[0]
    if b0 in (0xE8, 0xE9, 0xEB) or 0x70 <= b0 <= 0x7F or 0x50 <= b0 <= 0x57:
        return True
    if b0 == 0x0F and len(raw) > 1 and 0x80 <= raw[1] <= 0x8F:
        return True
    return b0 == 0x41 and len(raw) == 2 and 0x50 <= raw[1] <= 0x57


@lru_cache(maxsize=8)
def _inbound(path: str) -> tuple[tuple[int, int], ...] | None:
    """(target, source) of every direct jump or call in the library's functions: those its
    FDEs describe and those its symbols do (hand-written code may have no FDE). None when
    the library has more code than MAX_LIBRARY_BYTES."""
    try:
        import capstone
        elf = load_elf(path)
        ranges = set(elf.fde_ranges())
        for table in (SHT_DYNSYM, SHT_SYMTAB):
            ranges |= {(s.value, s.value + s.size) for s in elf.symbols(table)
                       if s.type == STT_FUNC and s.value and s.size}
    except (ImportError, ElfError, OSError):
        return ()
    if sum(end - start for start, end in ranges if 0 < end - start <= MAX_FUNCTION_BYTES) \
            > MAX_LIBRARY_BYTES:
        return None
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out = []
    for start, end in sorted(ranges):
        if not 0 < end - start <= MAX_FUNCTION_BYTES:
            continue
        try:
            code = elf.read_vaddr(start, end - start)
        except ElfError:
            continue
        for at, _size, mnemonic, op in md.disasm_lite(code, start):
            if (mnemonic.startswith("j") or mnemonic == "call") and op.startswith("0x"):
                try:
                    out.append((int(op, 16), at))
                except ValueError:
                    pass
    return tuple(out)


def _jumped_into(path: str, code: tuple[Insn, ...]) -> bool:
    """Does code outside the function jump into it anywhere but its start (a .cold part
    going back, another function sharing a tail)? Then a site inside may be bypassed."""
    start, end = code[0].address, code[-1].next
    inbound = _inbound(path)
    return inbound is None or any(start < target < end and not start <= source < end
                                  for target, source in inbound)
