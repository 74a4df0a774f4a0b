"""Catalog, resolution, clock, program/script generation and output formatting (no root needed)."""
from __future__ import annotations

import ctypes
import json
import os
import time

import pytest
from click.testing import CliRunner

from correlate.probe import bcc_backend, bcc_records, btf, catalog, clock, errors, resolve, stap_backend, stap_script
from correlate.probe.catalog import Arg, ProbeSpec
from correlate.outputs.terminal import safe_text
from correlate.cli.probe import format_event, probes
from correlate.probe.resolve import ResolvedProbe

GFAPI_PRESENT = os.path.exists("/usr/lib/x86_64-linux-gnu/libgfapi.so.0")
needs_gfapi = pytest.mark.skipif(not GFAPI_PRESENT, reason="libgfapi0 not installed")


def _fake(spec: ProbeSpec, method="dynsym") -> ResolvedProbe:
    return ResolvedProbe(spec, "/lib/x/" + spec.library, spec.function, 0x1234, 0x1234, method)


# ---- catalog ------------------------------------------------------------------------------

def test_groups_select_the_builtin_probes():
    gfapi = {s.function for s in catalog.select("gfapi")}
    assert {"glfs_utimens", "glfs_futimens", "glfs_init", "glfs_setattr", "glfs_fsetattr"} <= gfapi
    assert [s.function for s in catalog.select("samba")] == ["vfs_gluster_fntimes"]
    assert len(catalog.select("all")) == len(catalog.BUILTIN)
    with pytest.raises(ValueError, match="known: all, gfapi, samba"):
        catalog.select("nope")


def test_plugin_specs_join_the_catalog():
    extra = ProbeSpec("myplug.glfs_open", "myplug", "libgfapi.so.0", "glfs_open",
                      (Arg("path", 2, "str"), Arg("flags", 3, "int")), retprobe=True, retval="ptr")
    assert catalog.select("myplug", [extra]) == [extra]
    assert extra in catalog.select("all", [extra])
    with pytest.raises(ValueError, match="twice"):
        catalog.select("all", [catalog.BUILTIN[0]])


def test_spec_validation():
    with pytest.raises(ValueError):
        Arg("x", 7, "int")
    with pytest.raises(ValueError):
        Arg("x", 1, "float")
    with pytest.raises(ValueError, match="at most one"):
        ProbeSpec("a", "g", "l", "f", (Arg("a", 1, "str"), Arg("b", 2, "str")))
    with pytest.raises(ValueError, match="retval"):
        ProbeSpec("a", "g", "l", "f", retval="double")
    with pytest.raises(ValueError, match="implemented_by is the name of another function"):
        ProbeSpec("a", "g", "l", "f", implemented_by=("glfs_setattr",))
    with pytest.raises(ValueError, match="implemented_by is the name of another function"):
        ProbeSpec("a", "g", "l", "f", implemented_by="f")
    with pytest.raises(ValueError, match="set retprobe"):
        ProbeSpec("a", "g", "l", "f", emit="calls")


def test_a_folded_wrapper_has_no_program_and_its_implementation_names_it():
    from correlate.probe.bcc_program import attach_points, program_text
    from correlate.probe.wrappers import Fold
    specs = [ProbeSpec("t.outer", "t", "/lib/a.so", "outer", retprobe=True, emit="calls",
                       implemented_by="inner"),
             ProbeSpec("t.inner", "t", "/lib/a.so", "inner", retprobe=True, emit="calls"),
             ProbeSpec("t.other", "t", "/lib/a.so", "other", retprobe=True, emit="calls",
                       implemented_by="inner")]
    rps = [resolve.ResolvedProbe(s, s.library, s.function, 0x1000 + 0x100 * i, 0x1000 + 0x100 * i, "dynsym")
           for i, s in enumerate(specs)]
    folded = {0: Fold(1, 0x1000, 0x1040), 2: Fold(1, 0x1200, 0x1210)}
    text = program_text(rps, folded=folded)
    assert "int enter_0(" not in text and "int leave_0(" not in text and "int call_0(" not in text
    assert attach_points(rps, folded) == [[1]]
    inner = text.split("int enter_1(", 1)[1].split("int leave_1(", 1)[0]
    assert "bpf_probe_read_user(&ra, sizeof(ra), (void *)PT_REGS_SP(ctx));" in inner
    assert "if (at >= 0x1000ULL && at < 0x1040ULL)\n            ev->caller = 1;" in inner
    assert "else if (at >= 0x1200ULL && at < 0x1210ULL)\n            ev->caller = 3;" in inner
    # the caller is set before the call is sent and kept for the return
    assert inner.index("ev->caller = 3;") < inner.index("perf_submit") < inner.index("e.caller = ev->caller;")
    assert "ev->caller = entry->caller;" in text.split("int leave_1(", 1)[1]
    # unfolded, each has its own program and no caller check
    plain = program_text(rps)
    assert attach_points(rps) == [[0], [1], [2]] and "u64 ra = 0" not in plain


def test_wrappers_found_by_their_calls_not_their_tail_jumps():
    from correlate.probe.elf_functions import branches
    # call rel32 to 0x2000, jmp rel32 to 0x3000, call *slot(%rip) and jmp *slot(%rip) to 0x4000
    code = (b"\xe8" + (0x2000 - 0x1005).to_bytes(4, "little", signed=True)
            + b"\xe9" + (0x3000 - 0x100a).to_bytes(4, "little", signed=True)
            + b"\xff\x15" + (0x4000 - 0x1010).to_bytes(4, "little", signed=True)
            + b"\xff\x25" + (0x4000 - 0x1016).to_bytes(4, "little", signed=True) + b"\x90\x90")
    found = set(branches(code, 0x1000))
    assert {("call", 0x2000, False), ("jump", 0x3000, False), ("call", 0x4000, True),
            ("jump", 0x4000, True)} <= found


@needs_gfapi
def test_the_gfapi_time_setters_are_seen_in_setattr():
    from correlate.probe.wrappers import folds
    rps = [resolve.resolve(s) for s in catalog.select("gfapi")]
    name = {i: rp.function for i, rp in enumerate(rps)}
    seen = {name[i]: name[f.inner] for i, f in folds(rps).items()}
    assert seen == {"glfs_utimens": "glfs_setattr", "glfs_lutimens": "glfs_setattr",
                    "glfs_futimens": "glfs_fsetattr"}
    for i, f in folds(rps).items():
        assert f.start == rps[i].address < f.end <= f.start + 4096
    # without the implementing probe, a wrapper keeps its own trap
    alone = [rp for rp in rps if rp.function != "glfs_setattr"]
    assert {alone[i].function for i in folds(alone)} == {"glfs_futimens"}


@needs_gfapi
def test_resolve_and_offsets():
    spec = catalog.select("gfapi")[0]
    rp = resolve.resolve(spec)
    assert rp.method == "dynsym" and rp.address > 0
    rp2 = resolve.resolve(spec, offsets={"glfs_utimens": 0x4242})
    assert rp2.method == "offset" and rp2.address == 0x4242
    assert resolve.parse_offsets(["vfs_gluster_fntimes=0x80e0", "f=17"]) == {"vfs_gluster_fntimes": 0x80e0, "f": 17}
    with pytest.raises(errors.ProbeError, match="expected FUNC=0xADDRESS"):
        resolve.parse_offsets(["nonsense"])


def test_missing_library_and_symbol_errors_are_one_line():
    spec = ProbeSpec("t.x", "t", "libdoes-not-exist.so.9", "f")
    with pytest.raises(errors.LibraryNotFound) as exc:
        resolve.resolve(spec)
    assert "\n" not in str(exc.value) and "libdoes-not-exist.so.9" in str(exc.value)
    if GFAPI_PRESENT:
        spec = ProbeSpec("t.y", "t", "libgfapi.so.0", "glfs_not_here")
        with pytest.raises(errors.SymbolNotResolvable, match="pass --probe-offset glfs_not_here=0x"):
            resolve.resolve(spec)


@needs_gfapi
def test_library_found_through_a_process_maps(tmp_path):
    """--pid: the copy of the library that process has mapped."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "import ctypes,sys; ctypes.CDLL('libgfapi.so.0'); "
                             "print('ok', flush=True); sys.stdin.read()"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        path = resolve.find_library("libgfapi.so.0", proc.pid)
        assert os.path.realpath(path) == os.path.realpath(resolve.find_library("libgfapi.so.0"))
    finally:
        proc.stdin.close()
        proc.wait(5)


# ---- clock --------------------------------------------------------------------------------

def test_clock_offset_brackets_realtime():
    c = clock.measure(100)
    assert 0 <= c.error_ns < 1_000_000
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    real = time.clock_gettime_ns(time.CLOCK_REALTIME)
    assert abs(mono + c.offset_ns - real) < 1_000_000


def test_clock_map_remeasures_after_interval():
    cm = clock.ClockMap(samples=10, interval_ns=0)
    assert cm.maybe_remeasure() and len(cm.history) == 2
    assert cm.drift_ns >= 0 and cm.error_ns >= 0
    cm2 = clock.ClockMap(samples=10)
    assert not cm2.maybe_remeasure()


# ---- bcc program and record decoding ------------------------------------------------------

def test_program_text_has_one_function_pair_per_probe_and_one_program_per_address():
    rps = [_fake(s) for s in catalog.select("all")]
    text = bcc_backend.program_text(rps)
    for i, rp in enumerate(rps):
        assert f"static __always_inline int enter_{i}(struct pt_regs *ctx)" in text
        assert (f"int leave_{i}(" in text) == rp.spec.retprobe
    # `--probe all` has app-latency's io probe and gfapi's failure probe on glfs_pwrite: one
    # program (one consumer of the uprobe) runs both; every other function has its own
    from correlate.sources.probes import select_specs
    specs = select_specs(["all"])
    address = {f: 0x1000 + 0x100 * n for n, f in enumerate(sorted({s.function for s in specs}))}
    rps = [ResolvedProbe(s, "/lib/x/" + s.library, s.function, address[s.function],
                         address[s.function], "dynsym") for s in specs]
    text = bcc_backend.program_text(rps)
    groups = bcc_backend.attach_points(rps)
    assert sorted(i for g in groups for i in g) == list(range(len(rps)))
    assert all(len({(rps[i].path, rps[i].address) for i in g}) == 1 for g in groups)
    assert len({(rps[g[0]].path, rps[g[0]].address) for g in groups}) == len(groups)
    pwrite = [i for i, rp in enumerate(rps) if rp.function == "glfs_pwrite"]
    assert len(pwrite) == 2 and pwrite in groups
    first, second = pwrite
    assert f"int call_{first}(struct pt_regs *ctx) {{\n    enter_{first}(ctx);\n    enter_{second}(ctx);" in text
    assert f"int ret_{first}(struct pt_regs *ctx) {{\n    leave_{first}(ctx);\n    leave_{second}(ctx);" in text
    assert f"int call_{second}(" not in text and f"int ret_{second}(" not in text
    assert "read_smb_file_time(ev, (const void *)PT_REGS_PARM3(ctx));" in text
    assert "read_str(ev, (const void *)PT_REGS_PARM2(ctx));" in text


def test_struct_readers_are_generated_from_the_struct_layouts():
    text = bcc_backend.program_text([_fake(s) for s in catalog.select("gfapi")])
    stat = text.split("void read_glfs_stat(", 1)[1].split("}", 1)[0]
    assert ("bad |= read_words(ev, p, 0x0, 0, 1);\n    bad |= read_words(ev, p, 0x18, 1, 2);\n"
            "    bad |= read_words(ev, p, 0x48, 3, 2);") in stat
    assert "bad |= read_words(ev, p, 0x0, 0, 8);" in text.split("void read_smb_file_time(", 1)[1]
    assert set(catalog.STRUCT_WORDS) == set(catalog.STRUCT_KINDS)
    for runs in catalog.STRUCT_WORDS.values():      # the record holds 11 words
        assert sum(n for _off, n in runs) <= 11


def test_program_text_keeps_calls_in_task_storage_or_in_the_hash():
    rps = [_fake(s) for s in catalog.select("gfapi")]
    task = bcc_backend.program_text(rps)
    assert f"#define PROBES {len(rps)}\n" in task and "#define KEEP_IN_HASH" not in task
    hashed = bcc_backend.program_text(rps, keep_in="hash")
    assert "#define KEEP_IN_HASH\n" in hashed
    # the generated functions are the same; only the store behind keep_entry differs
    assert task.split("per-probe functions")[1] == hashed.split("per-probe functions")[1]
    with pytest.raises(ValueError, match="keep_in"):
        bcc_backend.program_text(rps, keep_in="map")


def test_program_text_follows_pointer_hops_for_strings():
    from dataclasses import replace
    spec = catalog.select("samba")[0]
    unresolved = _fake(spec, method="eh_frame+plt")
    assert "path" not in [a.name for a in unresolved.arguments]   # layout name not yet known
    rp = replace(unresolved, args=tuple(replace(a, deref=(0xD0, 0)) if a.deref else a for a in spec.args))
    text = bcc_backend.program_text([rp])
    assert "p = deref(p, 208);\n        p = deref(p, 0);\n        read_str(ev, p);" in text


def test_event_record_matches_the_c_layout():
    # 4 u64 + 4 u64 + 11 s64 + 8 u32 + 16 + 256 (see probes/uprobe_events.c)
    assert ctypes.sizeof(bcc_records.EventRecord) == 4 * 8 + 32 + 88 + 32 + 16 + 256


def _record(**kw):
    rec = bcc_records.EventRecord()
    for k, v in kw.items():
        if k == "words":
            for i, w in enumerate(v):
                rec.words[i] = w
        elif k == "ints":
            for i, w in enumerate(v):
                rec.ints[i] = w
        else:
            setattr(rec, k, v)
    return rec


def test_decode_utimens_call_with_negative_atime():
    spec = catalog.select("gfapi")[0]
    rec = _record(ts=1000, pid=5, tid=6, probe_id=0, kind=0, flags=bcc_records.F_STR | bcc_records.F_STRUCT,
                  comm=b"python", str=b"/f\x1b[31m", words=[-1, 0, 1700000000, 0])
    cm = clock.ClockMap(samples=5)
    ev = bcc_records.record_to_event(_fake(spec), rec, cm, "bcc", "h")
    assert ev["kind"] == "probe.call" and ev["time_ns"] == 1000 + cm.current.offset_ns
    assert ev["args"] == {"path": "/f\x1b[31m", "atime": -1, "atime_nsec": 0,
                          "mtime": 1700000000, "mtime_nsec": 0}
    line = format_event(ev)
    assert "\x1b" not in line and "atime=-1" in line


def test_decode_samba_file_time_order_and_faults():
    spec = catalog.select("samba")[0]
    rec = _record(kind=0, flags=bcc_records.F_STRUCT, ints=[0xABC],
                  words=[11, 12, 21, catalog.UTIME_OMIT, 31, 32, 41, 42])
    args, faults = bcc_records.decode_args(_fake(spec), rec)
    assert args["fsp"] == "0xabc"
    assert (args["mtime"], args["mtime_nsec"], args["atime"], args["atime_nsec"]) == (11, 12, 21, catalog.UTIME_OMIT)
    assert (args["create_time"], args["create_time_nsec"]) == (41, 42) and not faults
    rec = _record(kind=0, flags=bcc_records.F_STRUCT_FAULT)
    args, faults = bcc_records.decode_args(_fake(spec), rec)
    assert faults == ["ft"] and "atime" not in args


def test_return_values_by_c_type():
    assert bcc_records.convert_retval("int", 0xFFFFFFFF) == -1
    assert bcc_records.convert_retval("int", 0x12345678_00000000) == 0
    assert bcc_records.convert_retval("long", -5) == -5
    assert bcc_records.convert_retval("ptr", 4096) == "0x1000"


# ---- stap ---------------------------------------------------------------------------------

def test_stap_script_dwarf_and_plain_forms():
    rps = [_fake(s) for s in catalog.select("gfapi")]
    path = rps[0].path
    dwarf, _ = stap_script.script_text(rps, dwarf={path: True})
    assert "$times[0]->tv_sec" in dwarf and "user_string_n($path, 255)" in dwarf and "$return" in dwarf
    plain, _ = stap_script.script_text(rps, dwarf={path: False})
    assert "$times" not in plain and "$return" not in plain
    assert f'process("{path}").function("glfs_utimens")' in plain
    # glfs_init's return always; glfs_utimens's (emit="calls") only when it failed, which
    # takes $return, so not without DWARF
    assert 'function("glfs_init").return' in plain
    assert 'function("glfs_utimens").return' not in plain
    ret = dwarf.split('function("glfs_utimens").return {', 1)[1].split("}", 1)[0]
    assert "if (!(($return & 0xffffffff) >= 0x80000000)) next" in ret
    nort, _ = stap_script.script_text(rps, dwarf={path: False}, returns=False, filter_pid=True)
    assert ".return" not in nort and "if (pid() != target()) next" in nort


def test_stap_leaves_out_address_only_probes():
    rp = _fake(catalog.select("samba")[0], method="eh_frame+plt")
    text, skipped = stap_script.script_text([rp], dwarf={})
    assert skipped and "stap needs a name" in skipped[0][1] and "vfs_gluster" not in text.split("ready")[1]


def test_stap_lines_become_the_same_events():
    rps = [_fake(s) for s in catalog.select("gfapi")]
    entries = {}
    call = stap_script.parse_line("CORR\tcall\t0\t1700000000000000001\t7\t8\tpath=/a b\tatime=-1\t"
                                   "atime_nsec=0\tmtime=5\tmtime_nsec=0\tcomm=smbd", rps, "stap", "h", entries)
    assert call["kind"] == "probe.call" and call["function"] == "glfs_utimens"
    assert call["args"] == {"path": "/a b", "atime": -1, "atime_nsec": 0, "mtime": 5, "mtime_nsec": 0}
    assert call["comm"] == "smbd" and call["pid"] == 7 and call["tid"] == 8
    ret = stap_script.parse_line("CORR\treturn\t0\t1700000000000000501\t7\t8\tretval=-1\tcomm=smbd",
                                  rps, "stap", "h", entries)
    assert ret["retval"] == -1 and ret["duration_ns"] == 500
    for junk in ("", "CORR\tcall\t99\t1\t1\t1", "CORR\tcall\tx", "hello"):
        assert stap_script.parse_line(junk, rps, "stap", "h", entries) is None


# ---- CLI ----------------------------------------------------------------------------------

def test_probe_text_is_escaped_for_the_terminal():
    assert safe_text("a\nb\x1b") == "a\\nb\\x1b"
    assert safe_text("ok") == "ok"


def test_format_marks_utime_omit():
    ev = {"time_ns": 1_700_000_000_123_456_789, "kind": "probe.call", "function": "vfs_gluster_fntimes",
          "pid": 1, "tid": 1, "comm": "smbd", "args": {"atime": 0, "atime_nsec": catalog.UTIME_OMIT}}
    line = format_event(ev)
    assert line.startswith("2023-11-14T22:13:20.123456789Z call") and "atime_nsec=UTIME_OMIT" in line


@needs_gfapi
def test_probes_command_lists_resolution():
    result = CliRunner().invoke(probes, ["--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    by = {r["probe"]: r for r in rows}
    assert by["gfapi.glfs_utimens"]["method"] == "dynsym"
    assert by["gfapi.glfs_utimens"]["emit"] == "calls" and by["gfapi.glfs_open"]["emit"] == "failures"
    assert by["gfapi.glfs_utimens"]["implemented_by"] == "glfs_setattr"
    assert by["gfapi.glfs_utimens"]["seen_at"] == "glfs_setattr" and by["gfapi.glfs_setattr"]["seen_at"] is None
    text = CliRunner().invoke(probes, ["--probe", "gfapi"]).output
    assert "+return (when it failed)" in text and "bcc: seen in glfs_fsetattr, which it calls" in text
    # sub-first glfs_read traps at two branches inside it (trap_sites.py); push-first open does not
    read = by["gfapi.glfs_read"]["traps"]
    assert read["return_by"] == "uprobe reading %rax" and int(read["call"], 16) > int(by["gfapi.glfs_read"]["address"], 16)
    assert by["gfapi.glfs_open"]["traps"] is None
    assert "bcc: sub rsp, 0x28 at the entry is single-stepped; the call traps at +0x" in text
    # alone, glfs_utimens has its own trap
    text = CliRunner().invoke(probes, ["--probe", "gfapi.glfs_utimens"]).output
    assert "gfapi.glfs_utimens" in text and "seen in" not in text
    if os.path.exists("/usr/lib/x86_64-linux-gnu/samba/vfs/glusterfs.so"):
        assert by["samba.vfs_gluster_fntimes"]["method"] == "eh_frame+plt"


def test_probe_command_not_root_is_one_clear_error(monkeypatch):
    from correlate.cli import main
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(stap_backend.shutil, "which", lambda name: None)
    result = CliRunner().invoke(main, ["probe", "--probe", "gfapi", "--backend", "bcc", "--duration", "0"])
    if not GFAPI_PRESENT:
        pytest.skip("libgfapi0 not installed")
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == "correlate: probes need root (running as uid 1000): run as root"


def test_bcc_missing_names_the_package(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def fake(name, *a, **k):
        if name == "bcc":
            raise ImportError("No module named 'bcc'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(errors.BccMissing, match="apt-get install python3-bpfcc.*--system-site-packages"):
        bcc_backend.check_bcc_prerequisites()


def test_kernel_headers_missing_names_the_path(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(errors, "kernel_headers_dir", lambda: "/nonexistent/build")
    monkeypatch.setattr(bcc_backend, "kernel_headers_dir", lambda: "/nonexistent/build")
    try:
        import bcc  # noqa: F401
    except ImportError:
        pytest.skip("bcc not installed: the headers check comes after the import")
    with pytest.raises(errors.KernelHeadersMissing, match="/nonexistent/build"):
        bcc_backend.check_bcc_prerequisites()


def test_auto_backend_failure_names_both(monkeypatch):
    from correlate.probe.session import ProbeSession
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    if not GFAPI_PRESENT:
        pytest.skip("libgfapi0 not installed")
    s = ProbeSession(catalog.select("gfapi"), backend="auto")
    with pytest.raises(errors.BackendUnavailable, match=r"bcc: probes need root.*stap: "):
        s.start()


# ---- fops: failures only, fds followed in the kernel, errno ---------------------------------

def test_fop_specs_cover_the_calls_the_findings_need():
    by_function = {s.function: s for s in catalog.select("gfapi")}
    for name in ("glfs_open", "glfs_creat", "glfs_read", "glfs_pread", "glfs_write", "glfs_pwrite",
                 "glfs_fsync", "glfs_close", "glfs_stat", "glfs_fstat", "glfs_posix_lock",
                 "glfs_pread@GFAPI_3.4.0", "glfs_pwrite@GFAPI_3.4.0", "glfs_fsync@GFAPI_3.4.0"):
        spec = by_function[name]
        assert spec.retprobe and spec.emit == "failures", name
    assert by_function["glfs_open"].retval == by_function["glfs_creat"].retval == "ptr"
    assert by_function["glfs_pwrite"].fd_role == by_function["glfs_write"].fd_role == "writes"
    assert by_function["glfs_close"].fd_role == "closes"
    assert by_function["glfs_init"].emit == "all"


def test_fop_spec_validation():
    fd = Arg("fd", 1, "fd")
    with pytest.raises(ValueError, match="set retprobe"):
        ProbeSpec("x.a", "x", "l", "f", (fd,), emit="failures")
    with pytest.raises(ValueError, match="emit must be"):
        ProbeSpec("x.a", "x", "l", "f", (fd,), retprobe=True, emit="sometimes")
    with pytest.raises(ValueError, match="needs an fd argument"):
        ProbeSpec("x.a", "x", "l", "f", (Arg("n", 1, "long"),), retprobe=True, fd_role="writes")
    with pytest.raises(ValueError, match="returns a ptr"):
        ProbeSpec("x.a", "x", "l", "f", (Arg("p", 2, "str"),), retprobe=True, fd_role="opens")
    with pytest.raises(ValueError, match="at most one str or fd"):
        ProbeSpec("x.a", "x", "l", "f", (fd, Arg("p", 2, "str")))
    with pytest.raises(ValueError, match="four int"):
        ProbeSpec("x.a", "x", "l", "f", tuple(Arg(f"a{i}", i, "long") for i in range(1, 6)))


def test_program_sends_failed_calls_only_and_follows_fds():
    specs = {s.function: s for s in catalog.select("gfapi")}
    rps = [_fake(specs[f]) for f in ("glfs_open", "glfs_pwrite", "glfs_fsync", "glfs_close", "glfs_init")]
    text = bcc_backend.program_text(rps)
    # the entry of a failures-only probe keeps registers only: no record, no string read
    call_open = text.split("int enter_0(")[1].split("int leave_0(")[0]
    assert "perf_submit" not in call_open and "begin(" not in call_open and "read_str" not in call_open
    assert "e.str_ptr = PT_REGS_PARM2(ctx);" in call_open and "keep_entry(0, &e);" in call_open
    ret_open = text.split("int leave_0(")[1].split("int enter_1(")[0]
    assert "int failed = rc == 0;" in ret_open and "int send = failed;" in ret_open
    assert "fd_opened(pid, entry, rc);" in ret_open
    # a quiet return leaves before building any record; a failed one sends the call first,
    # its path read through the pointer the entry kept
    quiet, sending = ret_open.split("if (!send) {")[1].split("return 0;", 1)
    assert "begin(" not in quiet and "forget_entry(0, entry);" in quiet
    assert sending.index("call_record(0, entry)") < sending.index("begin(0, KIND_RETURN)")
    assert "read_str(ev, (const void *)entry->str_ptr);" in sending
    call_pwrite = text.split("int enter_1(")[1].split("int leave_1(")[0]
    assert "e.ints[0] = PT_REGS_PARM1(ctx);" in call_pwrite and "fd_path" not in call_pwrite
    ret_pwrite = text.split("int leave_1(")[1].split("int enter_2(")[0]
    assert "fd_wrote(pid, entry->ints[0], rc, (s64)entry->ints[2], bpf_ktime_get_ns());" in ret_pwrite
    assert "fd_path(ev, ev->ints[0]);" in ret_pwrite.split("if (!send) {")[1]
    ret_fsync = text.split("int leave_2(")[1]
    assert "fd_synced(0, pid, entry->ints[0], failed, 0);" in ret_fsync
    assert "fd_synced(ev, pid, entry->ints[0], failed, 0);" in ret_fsync
    assert "fd_synced(ev, pid, entry->ints[0], failed, 1);" in text.split("int leave_3(")[1]
    ret_init = text.split("int leave_4(")[1]
    assert "int send = 1;" in ret_init and "events.perf_submit(ctx, ev, sizeof(*ev));" in ret_init


def test_decode_failed_pread_with_fd_path_errno_and_tally():
    specs = {s.function: s for s in catalog.select("gfapi")}
    rp = _fake(specs["glfs_pread"])
    rec = _record(kind=0, flags=bcc_records.F_STR | bcc_records.F_FD_PATH, ints=[0xF00, 4096, 8192],
                  str=b"/dir/file")
    args, _ = bcc_records.decode_args(rp, rec)
    assert args == {"fd": "0xf00", "count": 4096, "offset": 8192, "path": "/dir/file"}
    rec = _record(kind=0, ints=[0xF00, 4096, 8192])        # opened before the probes: no path
    assert "path" not in bcc_records.decode_args(rp, rec)[0]
    cm = clock.ClockMap(samples=5)
    rec = _record(kind=1, retval=-1, flags=bcc_records.F_ERRNO, err=5)
    ev = bcc_records.record_to_event(rp, rec, cm, "bcc", "h")
    assert (ev["retval"], ev["errno"], ev["errno_name"]) == (-1, 5, "EIO")
    rec = _record(kind=1, retval=-1)                        # errno not readable: left out
    assert "errno" not in bcc_records.record_to_event(rp, rec, cm, "bcc", "h")
    close = _fake(specs["glfs_fsync"])
    rec = _record(kind=1, retval=-1, flags=bcc_records.F_TALLY, words=[3, 300, 10, 20, 0, 300, 5, 0])
    ev = bcc_records.record_to_event(close, rec, cm, "bcc", "h")
    assert ev["unsynced_writes"] == {"count": 3, "bytes": 300, "first_time_ns": 10 + cm.current.offset_ns,
                                     "last_time_ns": 20 + cm.current.offset_ns,
                                     "offset_lo": 0, "offset_hi": 300}
    rec = _record(kind=1, retval=-1, flags=bcc_records.F_TALLY,
                  words=[1, 1, 10, 10, -1, -1, 0, bcc_records.FD_OPENED_UNSEEN])
    ev = bcc_records.record_to_event(close, rec, cm, "bcc", "h")
    assert ev["unsynced_writes"]["opened_before_probes"] and "offset_lo" not in ev["unsynced_writes"]


def test_versioned_symbol_keeps_the_plain_function_name():
    spec = next(s for s in catalog.select("gfapi") if s.function == "glfs_pwrite@GFAPI_3.4.0")
    ev = bcc_records.record_to_event(_fake(spec), _record(kind=1, retval=-1), clock.ClockMap(samples=5),
                                     "bcc", "h")
    assert ev["function"] == "glfs_pwrite" and ev["symbol_version"] == "GFAPI_3.4.0"


def test_int_arguments_drop_the_undefined_upper_half():
    spec = next(s for s in catalog.select("gfapi") if s.function == "glfs_open")
    args, _ = bcc_records.decode_args(_fake(spec), _record(kind=0, ints=[0xDEAD_0000_0042]))
    assert args["flags"] == 0x42


def test_stap_leaves_out_failure_only_probes():
    rps = [_fake(s) for s in catalog.select("gfapi")]
    _text, skipped = stap_script.script_text(rps, dwarf={rps[0].path: False})
    left = {rp.spec.function for rp, why in skipped if "failed calls only" in why}
    assert "glfs_pwrite" in left and "glfs_utimens" not in left


def test_libc_errno_instruction_pattern():
    from correlate.probe.errno_tls import libc_errno_code
    body = b"\x48\x8b\x05" + (0x100).to_bytes(4, "little", signed=True) + \
        b"\x64\x48\x03\x04\x25\x00\x00\x00\x00\xc3"
    assert libc_errno_code(body, 0x1000) == 0x1000 + 7 + 0x100
    assert libc_errno_code(b"\xf3\x0f\x1e\xfa" + body, 0x1000) == 0x1000 + 4 + 7 + 0x100
    assert libc_errno_code(b"\x48\x8b\x05\x00\x01\x00\x00\x90\x90", 0x1000) is None   # no %fs add
    assert libc_errno_code(b"\x55\x48\x89\xe5", 0x1000) is None
    assert libc_errno_code(b"", 0x1000) is None


@needs_gfapi
def test_errno_constants_for_this_machine():
    from correlate.probe.errno_tls import LIBC, errno_slot, libc_errno
    libc, why = libc_errno(resolve.find_library(LIBC))
    if libc is None:
        pytest.skip(f"errno cannot be read here: {why}")
    assert libc.tpoff_vaddr > libc.fn_vaddr and libc.fsbase_off > 0
    assert errno_slot("/usr/lib/x86_64-linux-gnu/libgfapi.so.0") is not None


def test_format_shows_errno_and_unsynced_writes():
    ev = {"time_ns": 0, "kind": "probe.return", "function": "glfs_fsync", "pid": 1, "tid": 1,
          "comm": "app", "retval": -1, "errno": 2, "errno_name": "ENOENT",
          "unsynced_writes": {"count": 2, "bytes": 100}}
    line = format_event(ev)
    assert "retval=-1 errno=ENOENT unsynced_writes=2 (100 bytes)" in line


# ---- slow calls only: emit="slow" ---------------------------------------------------------

def test_slow_spec_validation():
    fd = Arg("fd", 1, "ptr")
    spec = ProbeSpec("x.a", "x", "l", "f", (fd,), retprobe=True, emit="slow", slow_ns=5_000_000)
    assert spec.slow_ns == 5_000_000
    with pytest.raises(ValueError, match="set retprobe"):
        ProbeSpec("x.a", "x", "l", "f", (fd,), emit="slow", slow_ns=5_000_000)
    for bad in (0, -1, 0.5, None):
        with pytest.raises(ValueError, match="slow_ns, an int > 0"):
            ProbeSpec("x.a", "x", "l", "f", (fd,), retprobe=True, emit="slow", slow_ns=bad)
    with pytest.raises(ValueError, match="only for emit"):
        ProbeSpec("x.a", "x", "l", "f", (fd,), retprobe=True, emit="failures", slow_ns=5)


def test_program_sends_slow_or_failed_calls_only():
    slow = ProbeSpec("x.pwrite", "x", "l", "glfs_pwrite", (Arg("fd", 1, "ptr"), Arg("n", 3, "long")),
                     retprobe=True, retval="long", emit="slow", slow_ns=100_000_000)
    failures = next(s for s in catalog.select("gfapi") if s.function == "glfs_open")
    text = bcc_backend.program_text([_fake(slow), _fake(failures)])
    call = text.split("int enter_0(")[1].split("int leave_0(")[0]
    # only the registers are kept, where every call waits, nothing is sent or read: the
    # collector lists slow calls in progress and may send the call while it runs
    assert "perf_submit" not in call and "begin(" not in call and "read_" not in call
    assert "keep_entry(0, &e);" in call
    ret = text.split("int leave_0(")[1].split("int enter_1(")[0]
    assert "struct entry_t *entry = kept_entry(0);" in ret
    # the task iterator lists probe 0's calls that have run 100 ms, not probe 1's
    assert "#define SLOW_PROBES(seq, r, k, now) list_running(seq, r, k, 0, 100000000ULL, now);\n" in text
    assert "BPF_ITER(task)" in text and "slow_calls" not in text
    pid_off = btf.member_offset("task_struct", "pid")
    assert f"#define TASK_PID_OFF {pid_off}\n" in text
    assert f"#define TASK_TGID_OFF {btf.member_offset('task_struct', 'tgid')}\n" in text
    # without task storage the calls wait in the hash, which the collector lists whole
    hashed = bcc_backend.program_text([_fake(slow), _fake(failures)], keep_in="hash")
    assert "SLOW_PROBES" not in hashed.split("// Uprobe/uretprobe events", 1)[0]
    assert "e->pid = bpf_get_current_pid_tgid() >> 32;" in hashed.split("void keep_entry(", 1)[1].split("}", 1)[0]
    assert "int failed = rc < 0;" in ret
    assert "int send = failed || (entry && bpf_ktime_get_ns() - entry->ts >= 100000000ULL);" in ret
    sending = ret.split("if (!send) {")[1].split("return 0;", 1)[1]
    # the call's record is built from the kept registers and sent before the return's
    assert sending.index("call_record(0, entry)") < sending.index("perf_submit(ctx, ev")
    assert sending.index("perf_submit(ctx, ev") < sending.index("begin(0, KIND_RETURN)")
    assert "forget_entry(0, entry);" in ret
    # emit="failures" is unchanged
    ret_open = text.split("int leave_1(")[1]
    assert "int send = failed;" in ret_open and "duration_ns >=" not in ret_open


def test_stap_names_why_slow_probes_are_left_out():
    slow = ProbeSpec("x.pwrite", "x", "l", "glfs_pwrite", (Arg("fd", 1, "ptr"),),
                     retprobe=True, emit="slow", slow_ns=100_000_000)
    rp = _fake(slow)
    text, skipped = stap_script.script_text([rp], dwarf={rp.path: False})
    assert [(r.spec.name, why) for r, why in skipped] == [(
        "x.pwrite", "glfs_pwrite reports only calls that took 100 ms or more or failed, decided "
        "in the bcc program at the return; stap here has no returns and would report every call")]
    assert "glfs_pwrite" not in text


def test_io_probes_follow_app_latency_threshold():
    """The io group's slow_ns comes from app-latency's after_s as this run configures it,
    through the correlate_probe_specs hook's `options`, capped for the live reorder window."""
    from correlate.sources.probes import select_specs
    from correlate.plugins.app_latency import IO_SLOW_MAX_NS
    default = select_specs(["io"])
    assert default and {(s.emit, s.slow_ns) for s in default} == {("slow", 100_000_000)}
    assert {s.slow_ns for s in select_specs(["io"], {"app-latency": {"after_s": 0.02}})} == {20_000_000}
    assert {s.slow_ns for s in select_specs(["io"], {"app-latency": {"after_s": 5.0}})} == {IO_SLOW_MAX_NS}
    assert {s.slow_ns for s in select_specs(["io"], {"app-latency": {"after_s": 0.0}})} == {1}
    assert "slow" not in {s.emit for s in select_specs(["gfapi"], {"app-latency": {"after_s": 0.02}})}


def test_detector_options_reach_the_io_probes(tmp_path):
    """-o and --config set app-latency's threshold for `run` and `probe`; the io probes get it."""
    from correlate.cli.probe import _detector_settings
    from correlate.sources.probes import select_specs
    settings = _detector_settings(("app-latency.after_s=0.05",), None)
    assert settings["app-latency"] == {"after_s": 0.05}
    assert {s.slow_ns for s in select_specs(["io"], settings)} == {50_000_000}
    config = tmp_path / "c.toml"
    config.write_text("[app-latency]\nafter_s = 0.03\n")
    assert {s.slow_ns for s in select_specs(["io"], _detector_settings((), str(config)))} == {30_000_000}
    import click
    with pytest.raises(click.BadParameter, match="no option 'after_ms'"):
        _detector_settings(("app-latency.after_ms=5",), None)


def test_pid_filter_is_in_the_program_not_per_process_uprobes():
    """--pid compiles the pid into every function (a per-process uprobe is a per-task perf
    event, which the kernel switches at each of the process's context switches)."""
    rps = [_fake(s) for s in catalog.select("gfapi")]
    assert "#define FILTER_TGID" not in bcc_backend.program_text(rps)
    text = bcc_backend.program_text(rps, pid=4242)
    assert "#define FILTER_TGID 4242\n" in text
    for i, rp in enumerate(rps):
        assert f"int enter_{i}(struct pt_regs *ctx) {{\n    PID_GUARD();" in text
        if rp.spec.retprobe:
            assert f"int leave_{i}(struct pt_regs *ctx) {{\n    PID_GUARD();" in text


def test_a_probe_moved_off_its_entry_reads_its_base_there_and_an_argument_from_its_stack_copy():
    """trap_sites.py moved the call's program to a branch inside the function: the library's
    load address is computed from that branch's address, and an argument the function saved
    on its stack is read from the copy there; the return is read where it is attached."""
    from correlate.probe.bcc_program import program_text
    from correlate.probe.trap_sites import Sites
    spec = ProbeSpec("t.f", "t", "/lib/a.so", "f", (Arg("fd", 1, "ptr"), Arg("count", 3, "long")),
                     retprobe=True, emit="failures")
    rp = resolve.ResolvedProbe(spec, spec.library, spec.function, 0x1000, 0x1000, "dynsym")
    text = program_text([rp], plan={0: Sites(0x101f, 0x104c, True, "moved", ((3, 0x8),))})
    enter = text.split("int enter_0(", 1)[1].split("\n}\n", 1)[0]
    assert "e.base = (PT_REGS_IP(ctx) - 0x101fULL) & ~0xfffULL;" in enter
    assert "e.ints[0] = PT_REGS_PARM1(ctx);" in enter and "e.ints[1] = stack_word(ctx, 0x8);" in enter
    assert "PT_REGS_PARM3" not in enter
    assert "s64 rc = PT_REGS_RC(ctx);" in text.split("int leave_0(", 1)[1]
    entry = program_text([rp])
    assert "e.base = (PT_REGS_IP(ctx) - 0x1000ULL)" in entry and "e.ints[1] = PT_REGS_PARM3(ctx);" in entry
