"""The stdlib ELF reader on the real system libraries and on hostile bytes."""
from __future__ import annotations

import os
import random
import re
import shutil
import struct
import subprocess

import pytest

from correlate.probe import eh_frame, elf_functions, elfsym
from correlate.probe.elf_functions import SymbolNotFound, resolve_in_file
from correlate.probe.elfsym import ElfError, load_elf, parse_elf

GFAPI = "/usr/lib/x86_64-linux-gnu/libgfapi.so.0"
SAMBA_GLUSTER = "/usr/lib/x86_64-linux-gnu/samba/vfs/glusterfs.so"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
CALLS = (("glfs_futimens", "glfs_utimens"), ("glfs_utimens",))

needs_gfapi = pytest.mark.skipif(not os.path.exists(GFAPI), reason=f"{GFAPI} not installed (libgfapi0)")
needs_samba = pytest.mark.skipif(not os.path.exists(SAMBA_GLUSTER),
                                 reason=f"{SAMBA_GLUSTER} not installed (samba-vfs-modules)")
needs_binutils = pytest.mark.skipif(shutil.which("nm") is None or shutil.which("objdump") is None,
                                    reason="binutils (nm, objdump) not installed")


def _nm_dynamic(path: str) -> dict[str, int]:
    out = subprocess.run(["nm", "-D", "--defined-only", path], capture_output=True, text=True,
                         check=True).stdout
    syms = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "Tt":
            syms[parts[2].split("@")[0]] = int(parts[0], 16)
    return syms


@needs_gfapi
@needs_binutils
@pytest.mark.parametrize("func", ["glfs_utimens", "glfs_futimens", "glfs_init", "glfs_setattr",
                                  "glfs_fsetattr", "glfs_lutimens"])
def test_dynsym_matches_nm(func):
    res = resolve_in_file(GFAPI, func)
    assert res.method == "dynsym"
    assert res.address == _nm_dynamic(GFAPI)[func]


@needs_gfapi
def test_unknown_function_says_what_was_tried():
    with pytest.raises(SymbolNotFound, match=r"not in \.dynsym or \.symtab"):
        resolve_in_file(GFAPI, "glfs_no_such_function")


@needs_samba
@needs_binutils
def test_stripped_static_function_found_by_eh_frame_and_plt():
    res = resolve_in_file(SAMBA_GLUSTER, "vfs_gluster_fntimes", CALLS)
    assert res.method == "eh_frame+plt"
    elf = load_elf(SAMBA_GLUSTER)
    assert not elf.symbols(elfsym.SHT_SYMTAB), "the Debian module is stripped"
    # Cross-check with objdump: the function starting there calls both PLT stubs.
    start, end = (int(x, 16) for x in re.search(r"FDE (0x[0-9a-f]+)-(0x[0-9a-f]+)", res.detail).groups())
    assert start == res.address
    dis = subprocess.run(["objdump", "-d", f"--start-address={start:#x}", f"--stop-address={end:#x}",
                          SAMBA_GLUSTER], capture_output=True, text=True, check=True).stdout
    assert "<glfs_futimens@plt>" in dis and "<glfs_utimens@plt>" in dis
    # ... and the stub addresses we computed are the ones objdump names.
    stubs = elf.plt_stubs()
    for name in ("glfs_futimens", "glfs_utimens"):
        assert f"{stubs[name]:x} <{name}@plt>" in dis


@needs_samba
def test_only_the_plt_fde_calls_every_stub_so_it_is_excluded():
    elf = load_elf(SAMBA_GLUSTER)
    hits = elf_functions.functions_calling(elf, ("glfs_futimens", "glfs_utimens"))
    plt = elf.section(".plt")
    assert len(hits) == 1 and not (plt.addr <= hits[0][0] < plt.addr + plt.size)


@needs_samba
def test_build_id_and_debuglink_read():
    elf = load_elf(SAMBA_GLUSTER)
    out = subprocess.run(["file", "-L", SAMBA_GLUSTER], capture_output=True, text=True).stdout \
        if shutil.which("file") else ""
    bid = elf.build_id()
    assert bid and re.fullmatch(r"[0-9a-f]{40}", bid)
    if "BuildID" in out:
        assert bid in out
    assert elf.debuglink() and elf.debuglink().endswith(".debug")


@pytest.mark.skipif(not os.path.exists(LIBC), reason="no libc at " + LIBC)
def test_eh_frame_ranges_cover_an_exported_function():
    elf = load_elf(LIBC)
    addr = resolve_in_file(LIBC, "clock_gettime").address
    assert any(s <= addr < e for s, e in elf.fde_ranges())


def test_debuginfo_method_by_build_id(tmp_path, monkeypatch):
    """A stripped file whose symbol lives in a separate debug file found by build-id."""
    if not (shutil.which("gcc") and shutil.which("objcopy")):
        pytest.skip("gcc/objcopy not installed")
    src = tmp_path / "m.c"
    src.write_text("static int hidden(int x) { return x * 3; }\n"
                   "int (*keep)(int) = hidden;\nint visible(int x) { return hidden(x) + 1; }\n")
    so = tmp_path / "libm_test.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-Wl,--build-id", "-o", so, src], check=True)
    debug_root = tmp_path / "debug"
    elf = load_elf(so)
    bid = elf.build_id()
    dbg = debug_root / ".build-id" / bid[:2] / (bid[2:] + ".debug")
    dbg.parent.mkdir(parents=True)
    subprocess.run(["objcopy", "--only-keep-debug", so, dbg], check=True)
    subprocess.run(["objcopy", "--strip-all", so], check=True)
    monkeypatch.setattr(elf_functions, "DEBUG_ROOT", debug_root)
    res = resolve_in_file(str(so), "hidden")
    assert res.method == "debuginfo" and res.detail == str(dbg)
    dsyms = {s.name: s.value for s in load_elf(dbg).symbols(elfsym.SHT_SYMTAB)}
    assert res.address == dsyms["hidden"]


# ---- hostile bytes ----------------------------------------------------------------------------

def test_not_elf_and_empty():
    for data in (b"", b"\x7fEL", b"MZ" + b"\0" * 100, b"\x7fELF" + b"\x09\x01" + b"\0" * 58):
        with pytest.raises(ElfError):
            parse_elf(data, "x")


@needs_samba
def test_truncated_real_file_never_crashes():
    data = open(SAMBA_GLUSTER, "rb").read()
    for cut in [16, 63, 64, 200, 0x2000, len(data) // 2, len(data) - 1]:
        try:
            elf = parse_elf(data[:cut], "cut")
            elf.symbols(elfsym.SHT_DYNSYM)
            elf.plt_stubs()
            elf.fde_ranges()
            elf_functions.functions_calling(elf, ("glfs_futimens", "glfs_utimens"))
        except ElfError as exc:
            assert "cut" in str(exc)


@needs_samba
def test_random_corruption_is_bounded():
    data = bytearray(open(SAMBA_GLUSTER, "rb").read())
    rng = random.Random(1234)
    for _ in range(40):
        bad = bytearray(data)
        for _ in range(200):
            bad[rng.randrange(len(bad))] = rng.randrange(256)
        try:
            elf = parse_elf(bytes(bad), "fuzz")
            elf.symbols(elfsym.SHT_DYNSYM)
            elf.build_id()
            elf_functions.functions_calling(elf, ("glfs_futimens", "glfs_utimens"))
        except ElfError:
            pass


def _elf64_header(shoff: int, shnum: int) -> bytes:
    """A bare ELF64 x86-64 header whose section headers are at shoff, shnum of them."""
    hdr = bytearray(64)
    hdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<HHIQQQIHHHHHH", hdr, 16, 3, 62, 1, 0, 0, shoff, 0, 64, 56, 0, 64, shnum, 0)
    return bytes(hdr)


def test_huge_section_count_rejected():
    with pytest.raises(ElfError, match="headers"):
        parse_elf(_elf64_header(64, 60000), "many")


def test_section_header_past_end_is_an_error_not_a_crash():
    with pytest.raises(ElfError, match="truncated"):
        parse_elf(_elf64_header(10_000, 3), "short")


def test_eh_frame_garbage_and_loops():
    # zero length terminates; a huge length stops; a CIE pointer to nowhere is skipped
    assert eh_frame.parse_eh_frame(b"\0" * 16, 0) == []
    assert eh_frame.parse_eh_frame(struct.pack("<I", 0xFFFFFFF0) + b"\0" * 12, 0) == []
    assert eh_frame.parse_eh_frame(struct.pack("<II", 12, 999) + b"\1" * 8, 0) == []
    rng = random.Random(7)
    for _ in range(200):
        eh_frame.parse_eh_frame(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), 0x1000)


# ---- struct offsets from code (correlate/probe/layout.py) ------------------------------------

@needs_samba
@needs_binutils
def test_fsp_name_offset_read_from_the_code_matches_objdump():
    from correlate.probe import layout
    res = resolve_in_file(SAMBA_GLUSTER, "vfs_gluster_fntimes", CALLS)
    off = layout.fsp_name_offset(load_elf(SAMBA_GLUSTER), res.address)
    start, end = (int(x, 16) for x in re.search(r"FDE (0x[0-9a-f]+)-(0x[0-9a-f]+)", res.detail).groups())
    dis = subprocess.run(["objdump", "-d", f"--start-address={start:#x}", f"--stop-address={end:#x}",
                          SAMBA_GLUSTER], capture_output=True, text=True, check=True).stdout.splitlines()
    call = next(i for i, line in enumerate(dis) if "<glfs_utimens@plt>" in line)
    window = "\n".join(dis[max(0, call - 6):call])
    assert re.search(r"mov\s+\(%(\w+)\),%rsi", window)
    assert off is not None and f"mov    {off:#x}(%rbx)" in window


@needs_gfapi
def test_layout_not_found_leaves_the_argument_out():
    """In a function without the pattern the offset is None, and resolve() drops the path
    with a note instead of reading a guessed address."""
    from correlate.probe import layout
    from correlate.probe.catalog import Arg, ProbeSpec
    from correlate.probe.resolve import resolve
    elf = load_elf(GFAPI)
    assert layout.fsp_name_offset(elf, resolve_in_file(GFAPI, "glfs_utimens").address) is None
    spec = ProbeSpec("t.layout", "t", "libgfapi.so.0", "glfs_utimens",
                     (Arg("path", 2, "str", deref=("files_struct.fsp_name", 0)), Arg("fs", 1, "ptr")))
    rp = resolve(spec)
    assert [a.name for a in rp.arguments] == ["fs"]
    assert rp.notes and "files_struct.fsp_name not found" in rp.notes[0]
    spec2 = ProbeSpec("t.layout2", "t", "libgfapi.so.0", "glfs_utimens",
                      (Arg("path", 2, "str", deref=("no.such.layout",)),))
    assert resolve(spec2).arguments == ()


def test_arbitrary_bytes_after_the_magic_never_escape_as_other_errors():
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.binary(min_size=0, max_size=600), st.sampled_from([b"\x7fELF\x02\x01", b"\x7fELF\x01\x02"]))
    def check(tail, magic):
        try:
            elf = parse_elf(magic + tail, "h")
            elf.symbols(elfsym.SHT_DYNSYM)
            elf.symbols(elfsym.SHT_SYMTAB)
            elf.plt_stubs()
            elf.build_id()
            elf.debuglink()
            elf.fde_ranges()
        except ElfError:
            pass

    check()


def _objdump_versions(path: str) -> dict[str, int]:
    """name@VERSION (old) and name@@VERSION (default) -> address, from objdump -T."""
    out = subprocess.run(["objdump", "-T", path], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        m = re.match(r"([0-9a-f]+) g\s+DF \.text\s+\S+\s+(\(?)(\S+?)\)?\s+(\S+)$", line)
        if m:
            found[m.group(4) + ("@" if m.group(2) else "@@") + m.group(3)] = int(m.group(1), 16)
    return found


@needs_gfapi
@needs_binutils
@pytest.mark.parametrize("func", ["glfs_pread", "glfs_pwrite", "glfs_fsync"])
def test_symbol_versions_match_objdump(func):
    """gfapi 6.0 changed these signatures; the old versions stay for older programs. A bare
    name is the default version (what a program linked today calls)."""
    versions = _objdump_versions(GFAPI)
    assert resolve_in_file(GFAPI, func).address == versions[f"{func}@@GFAPI_6.0"]
    assert resolve_in_file(GFAPI, f"{func}@GFAPI_3.4.0").address == versions[f"{func}@GFAPI_3.4.0"]
    with pytest.raises(SymbolNotFound):
        resolve_in_file(GFAPI, f"{func}@GFAPI_99")
