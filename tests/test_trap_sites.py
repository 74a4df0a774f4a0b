"""Where a probe traps (correlate/probe/trap_sites.py): off the entry where the kernel
would single-step the first instruction, only where the code proves the probe sees the
same arguments and return value. Shapes built here with gcc from assembly, the real
libgfapi, and bcc on a library built here."""
from __future__ import annotations

import shutil
import subprocess
import sys
import pytest

from correlate.probe import trap_sites
from correlate.probe.catalog import Arg, ProbeSpec
from correlate.probe.elfsym import SHT_DYNSYM, load_elf
from correlate.probe.errors import ProbeError
from correlate.probe.resolve import find_library, resolve
from tests.probe_child import call_and_collect, skip_unless_bcc

pytest.importorskip("capstone")

# Each function is one shape; the comments say where the analysis should put the traps.
SHAPES = r"""
#define FN(name) ".globl " #name "\n.type " #name ", @function\n" #name ":\n"
#define END(name) ".size " #name ", .-" #name "\n"
__attribute__((noinline)) int inner(int x) { return x < 0 ? -1 : x; }
__asm__(
/* long stacked(long x, long n): like glfs_read. sub first (single-stepped); -1 with errno
   EBADF when x is 0, else inner(n). call: the je; return: the jne (a guard like gcc's
   stack-protector check) that both paths pass before the ret. */
FN(stacked)
"\tsub $0x18,%rsp\n\tmovq $0,(%rsp)\n\ttest %rdi,%rdi\n\tje 2f\n"
"\tmov %rsi,%rdi\n\tcall inner@PLT\n\tcltq\n"
"1:\tcmpq $0,(%rsp)\n\tjne 3f\n\tadd $0x18,%rsp\n\tret\n"
"2:\tcall __errno_location@PLT\n\tmovl $9,(%rax)\n\tmov $-1,%rax\n\tjmp 1b\n"
"3:\tcall abort@PLT\n"
END(stacked)
/* int cleared(int x): clears a register it does not read, then tail-jumps: both traps on
   the jmp, the return address still on top of the stack. */
FN(cleared)
"\txor %ecx,%ecx\n\tjmp inner@PLT\n"
END(cleared)
/* long copied(long n, long x): like glfs_pread, saves x on its stack and reuses %rsi before
   its call (the push of an immediate is single-stepped too): the call traps at the call and
   reads x from its copy, 0x10 above %rsp there; the return at the jne. */
FN(copied)
"\tsub $0x18,%rsp\n\tmovq $0,(%rsp)\n\tmov %rsi,8(%rsp)\n\tmov $1,%esi\n\tpush $0\n"
"\tcall inner@PLT\n\tpop %rdx\n\tcltq\n\tcmpq $0,(%rsp)\n\tjne 1f\n\tadd $0x18,%rsp\n\tret\n"
"1:\tcall abort@PLT\n"
END(copied)
/* as copied, but the copy is overwritten before the call: stays at the entry */
FN(overwritten)
"\tsub $0x18,%rsp\n\tmov %rsi,8(%rsp)\n\tmovl $5,12(%rsp)\n\tmov $1,%esi\n\tcall inner@PLT\n"
"\tcmpq $0,(%rsp)\n\tjne 1f\n\tadd $0x18,%rsp\n\tret\n1:\tcall abort@PLT\n"
END(overwritten)
/* as copied, but only 4 bytes of %rsi are saved: stays at the entry */
FN(half_copied)
"\tsub $0x18,%rsp\n\tmov %esi,8(%rsp)\n\tmov $1,%esi\n\tcall inner@PLT\n"
"\tcmpq $0,(%rsp)\n\tjne 1f\n\tadd $0x18,%rsp\n\tret\n1:\tcall abort@PLT\n"
END(half_copied)
/* writes its first argument before any branch: stays at the entry */
FN(clobbers)
"\tsub $8,%rsp\n\tmov $1,%edi\n\ttest %rsi,%rsi\n\tje 1f\n1:\tcall inner@PLT\n\tadd $8,%rsp\n\tret\n"
END(clobbers)
/* starts with push, which the kernel emulates: stays at the entry */
FN(pushes)
"\tpush %rbx\n\tcall inner@PLT\n\tpop %rbx\n\tret\n"
END(pushes)
/* the only branch before the ret is in a loop: no return site */
FN(loops)
"\tsub $8,%rsp\n\ttest %rdi,%rdi\n\tje 2f\n1:\tdec %rdi\n\tjne 1b\n2:\tmov %rdi,%rax\n\tadd $8,%rsp\n\tret\n"
END(loops)
/* writes %rax after its last branch: no return site */
FN(late_rax)
"\tsub $8,%rsp\n\ttest %rdi,%rdi\n\tje 1f\n\tmov $2,%eax\n1:\tcmpq $0,(%rsp)\n\tjne 2f\n"
"\tmov $1,%eax\n\tadd $8,%rsp\n\tret\n2:\tcall abort@PLT\n"
END(late_rax)
/* returns through an indirect jump table entry: control the analysis does not follow */
FN(indirect)
"\tsub $8,%rsp\n\ttest %rdi,%rdi\n\tje 1f\n\tjmp *%rsi\n1:\tadd $8,%rsp\n\tret\n"
END(indirect)
/* shaped like stacked, but `entered` below jumps into its epilogue, past the jne */
FN(shared_tail)
"\tsub $8,%rsp\n\ttest %rdi,%rdi\n\tje 1f\n\tmov %rsi,%rax\n1:\tcmpq $0,(%rsp)\n\tjne 2f\n"
".Lshared_epilogue:\n\tadd $8,%rsp\n\tret\n2:\tcall abort@PLT\n"
END(shared_tail)
FN(entered)
"\tsub $8,%rsp\n\tjmp .Lshared_epilogue\n"
END(entered)
);
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> str:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the shapes")
    d = tmp_path_factory.mktemp("shapes")
    src, lib = d / "shapes.c", d / "libshapes.so"
    src.write_text(SHAPES)
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    return str(lib)


def _address(lib: str, name: str) -> int:
    return next(s.value for s in load_elf(lib).symbols(SHT_DYNSYM) if s.name == name)


def _sites(lib, name, args=(1,), needs_return=True, reads_stack_top=False):
    at = _address(lib, name)
    return at, trap_sites.trap_sites(lib, at, set(args), needs_return, reads_stack_top)


def _offset_of(lib: str, name: str, text: str) -> int:
    """Offset in `name` of its first instruction whose text starts with `text`."""
    at = _address(lib, name)
    return next(i.address for i in trap_sites.decode_function(lib, at) if i.text.startswith(text)) - at


def test_a_sub_first_function_traps_at_its_first_branch_and_returns_at_the_guard(shapes):
    at, sites = _sites(shapes, "stacked", (1, 2))
    assert sites.call == at + _offset_of(shapes, "stacked", "je")
    assert sites.ret == at + _offset_of(shapes, "stacked", "jne") and sites.ret_reads_rax
    assert sites.addresses == (sites.call, sites.ret)
    assert "single-stepped" in sites.why and "%rax" in sites.why
    # without a return program only the call moves
    alone = _sites(shapes, "stacked", (1, 2), needs_return=False)[1]
    assert (alone.call, alone.ret, alone.addresses) == (sites.call, None, (sites.call,))


def test_a_tail_jump_after_a_cleared_register_keeps_its_uretprobe_on_the_jump(shapes):
    at, sites = _sites(shapes, "cleared", (1,))
    jmp = at + _offset_of(shapes, "cleared", "jmp")
    assert (sites.call, sites.ret, sites.ret_reads_rax) == (jmp, jmp, False)
    assert sites.addresses == (jmp,)
    # a probe that reads the cleared register (the fourth argument) stays at the entry
    assert _sites(shapes, "cleared", (1, 4))[1] == trap_sites.at_entry(at, True)


def test_an_argument_saved_on_the_stack_is_read_from_its_copy(shapes):
    at, sites = _sites(shapes, "copied", (1, 2))
    assert sites.call == at + _offset_of(shapes, "copied", "call")
    assert sites.ret == at + _offset_of(shapes, "copied", "jne") and sites.ret_reads_rax
    assert sites.stack_args == ((2, 0x10),) and "argument 2 read from its copy at 0x10(%rsp)" in sites.why


@pytest.mark.parametrize("name,why", [
    ("overwritten", "the stack copy of the argument is overwritten before the branch"),
    ("half_copied", "only 4 bytes of the argument register were saved"),
    ("clobbers", "writes an argument register the probe reads before any branch"),
    ("pushes", "starts with push, which the kernel emulates"),
    ("loops", "the only branch between the call site and the ret is in a loop"),
    ("late_rax", "%rax is written after the last branch"),
    ("indirect", "an indirect jump: control the analysis does not follow"),
    ("shared_tail", "another function jumps into its epilogue, past the guard"),
])
def test_what_the_analysis_cannot_prove_stays_at_the_entry(shapes, name, why):
    at, sites = _sites(shapes, name, (1, 2))
    assert sites == trap_sites.at_entry(at, True), why


def test_a_probe_that_reads_the_stack_top_at_the_entry_stays_there(shapes):
    """wrappers.py's caller check reads the return address at %rsp: after the sub it moved."""
    at, sites = _sites(shapes, "stacked", (1,), reads_stack_top=True)
    assert sites == trap_sites.at_entry(at, True)
    at, sites = _sites(shapes, "cleared", (1,), reads_stack_top=True)
    assert sites.call == at + _offset_of(shapes, "cleared", "jmp")   # the stack did not move


def test_an_argument_on_the_stack_or_no_capstone_keeps_the_entry(shapes, monkeypatch):
    at, sites = _sites(shapes, "stacked", (1, 7))
    assert sites == trap_sites.at_entry(at, True)
    monkeypatch.setitem(sys.modules, "capstone", None)   # import capstone raises ImportError
    trap_sites.decode_function.cache_clear()
    try:
        assert _sites(shapes, "stacked", (1,))[1] == trap_sites.at_entry(at, True)
    finally:
        monkeypatch.undo()
        trap_sites.decode_function.cache_clear()


def test_a_library_too_large_to_search_for_jumps_into_the_function_keeps_the_entry(shapes, monkeypatch):
    """The search for jumps into a function reads all the library's code: bounded, and past
    the bound nothing is proved."""
    monkeypatch.setattr(trap_sites, "MAX_LIBRARY_BYTES", 64)
    trap_sites._inbound.cache_clear()
    try:
        at, sites = _sites(shapes, "stacked", (1,))
        assert sites == trap_sites.at_entry(at, True)
    finally:
        monkeypatch.undo()
        trap_sites._inbound.cache_clear()
    assert _sites(shapes, "stacked", (1,))[1].ret_reads_rax


def test_kernel_emulates_branches_and_push_but_not_sub_or_prefixed_encodings():
    yes = [b"\xe8\0\0\0\0", b"\xe9\0\0\0\0", b"\xeb\0", b"\x74\x32", b"\x0f\x85\0\0\0\0",
           b"\x53", b"\x41\x57"]
    no = [b"\x48\x83\xec\x28", b"\x31\xc9", b"\x66\x90", b"\x3e\x74\x32", b"\xc3", b""]
    assert all(trap_sites.kernel_emulates(b) for b in yes)
    assert not any(trap_sites.kernel_emulates(b) for b in no)


def _gfapi() -> str:
    try:
        return find_library("libgfapi.so.0")
    except ProbeError as exc:
        pytest.skip(str(exc))


def test_on_the_real_libgfapi_the_sub_first_fops_move():
    """glfs_read and glfs_write start with `sub $0x28,%rsp`: their probes (fd and count)
    trap at the NULL check's je and the stack-protector check's jne. glfs_pread and
    glfs_pwrite (both versions) save their count on the stack and reuse %rdx before their
    first branch, a call: they trap there and read the count from the copy. glfs_setfsuid
    saves only 4 bytes of its argument: it stays. glfs_posix_lock clears %ecx and
    tail-jumps. Push-first functions stay at the entry."""
    lib = _gfapi()
    elf = load_elf(lib)
    addr = {s.name: s.value for s in elf.symbols(SHT_DYNSYM) if s.value}
    for name in ("glfs_read", "glfs_write"):
        sites = trap_sites.trap_sites(lib, addr[name], {1, 3}, True)
        code = {i.address: i.text for i in trap_sites.decode_function(lib, addr[name])}
        assert code[addr[name]].startswith("sub rsp")
        assert code[sites.call].startswith("je") and code[sites.ret].startswith("jne"), name
        assert sites.ret_reads_rax and sites.call < sites.ret
    for name in ("glfs_pread", "glfs_pwrite"):
        sites = trap_sites.trap_sites(lib, addr[name], {1, 3, 4}, True)
        code = {i.address: i.text for i in trap_sites.decode_function(lib, addr[name])}
        assert code[sites.call].startswith("call") and code[sites.ret].startswith("jne"), name
        assert [i for i, _off in sites.stack_args] == [3], sites
    assert trap_sites.trap_sites(lib, addr["glfs_setfsuid"], {1}, True) == \
        trap_sites.at_entry(addr["glfs_setfsuid"], True)
    lock = trap_sites.trap_sites(lib, addr["glfs_posix_lock"], {1, 2}, True)
    assert lock.call == lock.ret != addr["glfs_posix_lock"] and not lock.ret_reads_rax
    for name in ("glfs_open", "glfs_close", "glfs_setattr"):
        assert trap_sites.trap_sites(lib, addr[name], {1, 2}, True) == trap_sites.at_entry(addr[name], True)


DRIVER = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.stacked.restype = lib.copied.restype = ctypes.c_long
print("ready", flush=True)
for line in sys.stdin:
    name, *args = line.split()
    print(getattr(lib, name)(*[ctypes.c_long(int(a)) for a in args]), flush=True)
"""


def test_bcc_probes_at_the_moved_sites_see_the_arguments_the_return_and_errno(shapes):
    """Real uprobes on the library built here: a failures probe on `stacked` (call at its
    je, return at its jne, read from %rax) reports its failed calls with their arguments,
    return value, errno and duration, and nothing for a success; an every-call probe on
    `cleared` (both on its tail jump) reports the call and inner's return; one on `copied`
    reads its second argument from the stack copy."""
    skip_unless_bcc()
    from correlate.probe.bcc_backend import BccCollector
    specs = [ProbeSpec("t.stacked", "t", shapes, "stacked", (Arg("x", 1, "long"), Arg("n", 2, "long")),
                       retprobe=True, retval="long", emit="failures"),
             ProbeSpec("t.cleared", "t", shapes, "cleared", (Arg("x", 1, "int"),), retprobe=True,
                       emit="all"),
             ProbeSpec("t.copied", "t", shapes, "copied", (Arg("n", 1, "long"), Arg("x", 2, "long")),
                       retprobe=True, retval="long", emit="all")]
    child = subprocess.Popen([sys.executable, "-c", DRIVER, shapes], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    collector = BccCollector([resolve(s, child.pid) for s in specs], pid=child.pid)
    stacked, cleared, copied = (collector.plan[0], collector.plan[1], collector.plan[2])
    assert copied.stack_args == ((2, 0x10),)
    assert stacked.ret_reads_rax and stacked.call != _address(shapes, "stacked")
    assert cleared.call == cleared.ret != _address(shapes, "cleared")
    collector.start()
    assert collector.trap_addresses == 5
    calls = (("stacked 1 6", 6), ("stacked 0 5", -1), ("stacked 1 -4", -1), ("cleared 7", 7),
             ("cleared -2", -1), ("copied 6 77", 6))
    seen = call_and_collect(child, collector, calls, want=10)
    got = [(e["kind"].split(".")[1], e["function"], e.get("args"), e.get("retval")) for e in seen]
    assert got == [("call", "stacked", {"x": 0, "n": 5}, None), ("return", "stacked", None, -1),
                   ("call", "stacked", {"x": 1, "n": -4}, None), ("return", "stacked", None, -1),
                   ("call", "cleared", {"x": 7}, None), ("return", "cleared", None, 7),
                   ("call", "cleared", {"x": -2}, None), ("return", "cleared", None, -1),
                   ("call", "copied", {"n": 6, "x": 77}, None), ("return", "copied", None, 6)], got
    assert seen[1].get("errno_name") == "EBADF"    # set by stacked before its jmp to the guard
    assert all(0 < e["duration_ns"] < 10**9 for e in seen if e["kind"] == "probe.return")
