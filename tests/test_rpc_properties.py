"""Property tests: hostile bytes and arbitrary TCP splits never break the RPC layer.

- any bytes, split anywhere, give only well-formed events and counted skips (RpcSink never
  raises, never reports an internal error, never holds more than a bounded amount);
- a valid stream gives the same events however it is split;
- valid messages after garbage are all recovered;
- every Gluster decoder, fed random bytes, returns a dict or raises DecodeError only.
"""
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from correlate.diagnostics import Diagnostics
from correlate.errors import DecodeError
from correlate.gluster import programs
from correlate.wire.model import Conn
from correlate.wire.record_marking import KEEP_RECORD
from correlate.wire.rpc import RpcSink
from correlate.xdr import Unpacker
from tests.test_rpc import DUMP, FOP, call_msg, cred_v2, cred_v3, record, reply_msg

SETTINGS = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
EVENT_KEYS = {"time_ns", "layer", "kind", "source", "xid", "program", "program_num", "version",
              "procedure", "procedure_num", "src", "dst", "conn"}


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def run(chunks_by_side, max_record=1 << 20):
    diag = Diagnostics("prop")
    sink, conn = RpcSink("prop", diag, max_record=max_record), Conn("127.0.0.1:1", "127.0.0.2:2", 1)
    events = []
    for t, (from_client, chunk, gap) in enumerate(chunks_by_side):
        if gap:
            events += sink.on_gap(conn, from_client, t, gap)
        events += sink.on_data(conn, from_client, t, chunk)
        for d in sink._conns[conn].dirs.values():
            assert len(d.buf) <= len(chunk) + 64 or d.state == "mark"
            assert len(d.record) <= KEEP_RECORD
    events += sink.on_close(conn, 10**9)
    return events, diag


def check_events(events, diag):
    for ev in events:
        assert ev["kind"] in ("rpc.call", "rpc.reply") and ev["layer"] == "wire"
        assert EVENT_KEYS <= ev.keys()
    assert not [k for k in diag.counts if "internal error" in k]


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=300), st.integers(0, 3) | st.just(0)),
                max_size=30))
def test_random_bytes_and_gaps_never_break_the_sink(chunks):
    events, diag = run(chunks)
    check_events(events, diag)


@SETTINGS
@given(st.binary(min_size=1, max_size=2000), st.lists(st.integers(0, 5000), max_size=40))
def test_random_bytes_with_record_marks_inside(noise, cuts):
    # sprinkle plausible marks and call tags so the framer's deeper paths are exercised
    msg = record(call_msg(7, FOP, 400, 38, noise[:100], cred_v3()))
    data = noise + msg + noise[::-1] + struct.pack(">I", 0xFFFFFFFF) + noise
    events, diag = run([(True, c, 0) for c in split(data, cuts)], max_record=4096)
    check_events(events, diag)


MESSAGES = st.lists(
    st.tuples(st.integers(1, 2**32 - 1), st.sampled_from([(DUMP, 1, 1), (DUMP, 1, 2), (FOP, 400, 38),
                                                          (FOP, 330, 27), (FOP, 400, 99)]),
              st.binary(max_size=200), st.lists(st.integers(1, 64), max_size=3)),
    min_size=1, max_size=8)


def stream_of(messages) -> bytes:
    out = b""
    for xid, (prog, vers, proc), args, frags in messages:
        msg = call_msg(xid, prog, vers, proc, args, cred_v3())
        total, sizes = 0, []
        for f in frags:                      # fragment sizes that fit inside the message
            if total + f < len(msg):
                sizes.append(f)
                total += f
        out += record(msg, sizes)
    return out


def strip_time(events):
    return [{k: v for k, v in e.items() if k != "time_ns"} for e in events]


@SETTINGS
@given(MESSAGES, st.lists(st.integers(0, 10000), max_size=50))
def test_split_anywhere_gives_the_same_events(messages, cuts):
    data = stream_of(messages)
    whole, diag1 = run([(True, data, 0)])
    pieces, diag2 = run([(True, c, 0) for c in split(data, cuts)])
    assert [e["xid"] for e in whole] == [m[0] for m in messages]
    assert strip_time(pieces) == strip_time(whole)
    assert not diag1.counts and not diag2.counts


@SETTINGS
@given(st.binary(min_size=1, max_size=3000).map(lambda b: b.replace(b"\0", b"\x07")), MESSAGES,
       st.lists(st.integers(0, 10000), max_size=20))
def test_all_messages_after_garbage_are_recovered(garbage, messages, cuts):
    # Garbage without zero bytes cannot hold the fixed call/reply words, so nothing in it
    # may be taken for a record: every message after it must come out, in order.
    # (While hunting, a record is recognized by the header in its first fragment, so that
    # fragment must hold the call header: Gluster sends one fragment per record anyway.)
    messages = [(x, p, a, [f + 40 for f in frags]) for x, p, a, frags in messages]
    data = garbage + stream_of(messages)
    events, diag = run([(True, c, 0) for c in split(data, cuts)])
    assert [e["xid"] for e in events] == [m[0] for m in messages]
    skipped = sum(v for k, v in diag.counts.items() if k.endswith("(bytes)"))
    assert skipped == len(garbage)


@SETTINGS
@given(st.integers(1, 2**32 - 1), st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=10))
def test_replies_with_random_bodies_are_reported(xid, body, cuts):
    call = record(call_msg(xid, FOP, 400, 38, b"", cred_v3()))
    reply = record(reply_msg(xid, body))
    events, diag = run([(True, call, 0)] + [(False, c, 0) for c in split(reply, cuts)])
    check_events(events, diag)
    assert [e["kind"] for e in events] == ["rpc.call", "rpc.reply"]
    assert events[1]["procedure"] == "SETATTR"


DECODERS = [(f"{p.name} v{v} {proc.name} {which}", fn)
            for p in programs.REGISTRY.values() for v, table in p.versions.items()
            for proc in table.values()
            for which, fn in (("args", proc.args), ("result", proc.result)) if fn is not None]


@pytest.mark.parametrize("label,decoder", DECODERS, ids=[d[0] for d in DECODERS])
@settings(max_examples=40, deadline=2000)
@given(data=st.binary(max_size=600))
def test_decoders_raise_only_decode_error(label, decoder, data):
    try:
        out = decoder(Unpacker(data))
    except DecodeError:
        return
    assert isinstance(out, dict)


@settings(max_examples=100, deadline=2000)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=200))
def test_decoders_on_word_streams(words):
    """Random 32-bit words reach deeper than random bytes (lengths and counts look real)."""
    data = b"".join(struct.pack(">I", w if w < 2**31 else w % 64) for w in words)
    for _, decoder in DECODERS:
        try:
            decoder(Unpacker(data))
        except DecodeError:
            pass


def _outcome(fn, *args):
    try:
        return fn(*args)
    except DecodeError as exc:
        return f"DecodeError: {exc}"


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    b = bytearray(data)
    for at, value in edits:
        if b:
            b[at % len(b)] = value
    return bytes(b[:cut % (len(b) + 1)]) if cut >= 0 else bytes(b)


EDITS = st.lists(st.tuples(st.integers(0, 200), st.sampled_from([0, 1, 2, 3, 0x80, 0xFF])),
                 max_size=3)


@SETTINGS
@given(st.sampled_from([
    call_msg(7, FOP, 400, 27, b"\0" * 40, cred_v3(groups=(1, 2))),
    call_msg(8, DUMP, 1, 1),
    reply_msg(7, b"\0" * 16),
    reply_msg(9, b"", accept_stat=2, mismatch=(1, 3)),
]), EDITS, st.integers(-1, 120))
def test_header_fast_path_reads_like_field_by_field(msg, edits, cut):
    from correlate.wire.rpc_header import _parse_header_slowly, parse_header
    data = _mutate(msg, edits, cut)
    assert _outcome(parse_header, data) == _outcome(_parse_header_slowly, data)


@SETTINGS
@given(st.sampled_from([cred_v3(groups=(5, 6, 7), lk_owner=b"\1\2\3"), cred_v3(), cred_v2(),
                        cred_v2(groups=(), lk_owner=b"")]), EDITS, st.integers(-1, 80))
def test_credential_fast_path_reads_like_field_by_field(cred, edits, cut):
    from correlate.wire.rpc_cred import _decode_cred_slowly, decode_cred
    flavor, body = cred
    data = _mutate(body, edits, cut)
    assert decode_cred(flavor, data) == _decode_cred_slowly(flavor, data)
