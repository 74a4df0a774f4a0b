"""uprobe_multi links made by correlate/probe/uprobe_links.py, on the real libgfapi: a
program counting calls and returns of glfs_new in two processes."""
from __future__ import annotations

import os

import pytest

from correlate.probe.errors import ProbeError
from correlate.probe.uprobe_links import (BPF_TRACE_UPROBE_MULTI, LinksRefused, attach_links,
                                          close_links, file_offset, link_uprobe)
from tests.probe_child import skip_unless_bcc
from tests.test_probe_backends import Child, _skip_unless_root_and_gfapi

pytestmark = pytest.mark.bpf

COUNTER = """
#include <uapi/linux/ptrace.h>
BPF_ARRAY(hits, u64, 2);
int on_call(struct pt_regs *ctx) { int k = 0; hits.increment(k); return 0; }
int on_return(struct pt_regs *ctx) { int k = 1; if (PT_REGS_RC(ctx)) hits.increment(k); return 0; }
"""


def _counts(bpf) -> tuple[int, int]:
    table = bpf[b"hits"]
    return table[table.Key(0)].value, table[table.Key(1)].value


def test_links_trap_in_every_process_and_a_return_link_sees_the_return_value():
    skip_unless_bcc()
    rp = _skip_unless_root_and_gfapi()
    from bcc import BPF
    bpf = BPF(text=COUNTER.encode())
    one, other = Child(), Child()
    links: list[int] = []
    try:
        links = attach_links(bpf, [("on_call", rp.path, rp.address, False),
                                   ("on_return", rp.path, rp.address, True)])
        assert len(links) == 2
        for _ in range(3):
            one.call("one")
        for _ in range(2):
            other.call("other")
        # glfs_new returns a non-NULL fs: every return is counted
        assert _counts(bpf) == (5, 5)
        close_links(links)
        assert links == []
        one.call("detached")
        assert _counts(bpf) == (5, 5)
        # a call link alone: the calls counted, no returns
        fn = bpf.load_func(b"on_call", BPF.KPROBE, attach_type=BPF_TRACE_UPROBE_MULTI)
        links.append(link_uprobe(fn.fd, rp.path, rp.address))
        one.call("a")
        other.call("b")
        assert _counts(bpf) == (7, 5)
    finally:
        close_links(links)
        one.close()
        other.close()
        bpf.cleanup()


def test_a_refused_link_closes_the_ones_made_and_says_where(monkeypatch):
    skip_unless_bcc()
    rp = _skip_unless_root_and_gfapi()
    from bcc import BPF
    from correlate.probe import uprobe_links
    bpf = BPF(text=COUNTER.encode())
    made = []
    real = uprobe_links.link_uprobe

    def second_refused(prog_fd, path, vaddr, *how):
        if made:
            raise ProbeError(f"refused at {vaddr:#x}")
        made.append(real(prog_fd, path, vaddr, *how))
        return made[-1]

    monkeypatch.setattr(uprobe_links, "link_uprobe", second_refused)
    try:
        with pytest.raises(LinksRefused, match=f"refused at {rp.address:#x}"):
            attach_links(bpf, [("on_call", rp.path, rp.address, False),
                               ("on_return", rp.path, rp.address, True)])
        with pytest.raises(OSError):   # the first link was closed
            os.fstat(made[0])
    finally:
        bpf.cleanup()


def test_an_address_outside_the_library_is_a_probe_error():
    rp = _skip_unless_root_and_gfapi()
    with pytest.raises(ProbeError, match="no loaded segment"):
        file_offset(rp.path, 1 << 40)
    assert file_offset(rp.path, rp.address) == rp.file_offset
