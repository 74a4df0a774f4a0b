"""Wrappers seen where they do their work.

A spec may say its function is `implemented_by` another function of the same library: in
gfapi 6+, glfs_utimens and glfs_lutimens only build a struct glfs_stat from their times and
call glfs_setattr; glfs_futimens calls glfs_fsetattr. When that function is probed too and
the wrapper's code really calls it, the bcc program does not trap in the wrapper at all: the
implementing probe reads its return address, and a call coming from inside the wrapper is
reported under the wrapper's name (the event's `via` names the function it was seen in).
One trap instead of two per call, and the wrappers are the ones that start with `sub
$N,%rsp`, which the kernel single-steps (three times the cost of a trap that it emulates).

Only a real `call` counts: after a tail jump the return address is the wrapper's caller, so
a wrapper that jumps to the function is probed itself. A wrapper that fails before it calls
the function is not seen; the gfapi time setters have no such path.
"""
from __future__ import annotations

from dataclasses import dataclass

from .elf_functions import branches, function_span
from .elfsym import ElfError, ElfFile, load_elf
from .resolve import ResolvedProbe

MAX_WRAPPER_BYTES = 4096   # a wrapper is a few instructions; bounds the scan


@dataclass(frozen=True)
class Fold:
    """Probe `inner` reports the calls made from the wrapper's code [start, end)."""
    inner: int
    start: int
    end: int


def folds(probes: list[ResolvedProbe]) -> dict[int, Fold]:
    """Wrapper probe index -> Fold, for each wrapper seen at its implementing probe."""
    elves: dict[str, ElfFile | None] = {}
    out: dict[int, Fold] = {}
    for i, rp in enumerate(probes):
        name = rp.spec.implemented_by
        inner = _implementing_probe(probes, rp, name) if name else None
        if inner is None:
            continue
        if rp.path not in elves:
            try:
                elves[rp.path] = load_elf(rp.path)
            except (ElfError, OSError):
                elves[rp.path] = None
        elf = elves[rp.path]
        span = function_span(elf, rp.address, MAX_WRAPPER_BYTES) if elf else None
        if span and _calls_without_tail_jump(elf, span, name, probes[inner].address):
            out[i] = Fold(inner, *span)
    return out


def _implementing_probe(probes: list[ResolvedProbe], wrapper: ResolvedProbe, name: str) -> int | None:
    """The probe on `name` in the wrapper's library file that sends every call (a probe
    that sends only failed or slow calls would hide the wrapper's calls)."""
    for j, rp in enumerate(probes):
        if rp.path == wrapper.path and rp.function == name and rp.spec.emit in ("all", "calls") \
                and rp.spec.retprobe == wrapper.spec.retprobe and not rp.spec.implemented_by:
            return j
    return None


def _calls_without_tail_jump(elf: ElfFile, span: tuple[int, int], name: str, address: int) -> bool:
    """Does the code in `span` call `name` (its PLT stub, its GOT slot or its own address)
    and never jump to it?"""
    try:
        targets = {address}
        stub = elf.plt_stubs().get(name)
        if stub is not None:
            targets.add(stub)
        slots = {slot for slot, imported in elf.plt_relocations().items() if imported == name}
        code = elf.read_vaddr(span[0], span[1] - span[0])
    except ElfError:
        return False
    kinds = {kind for kind, target, through_slot in branches(code, span[0])
             if (target in slots if through_slot else target in targets)}
    return kinds == {"call"}
