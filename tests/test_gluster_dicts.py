"""Gluster dict encodings: v3 (dict_serialize inside `opaque dict<>`) and v4 (gfx_dict)."""
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from correlate.errors import DecodeError
from correlate.gluster import dicts
from correlate.xdr import Packer, Unpacker


# -- builders (shared with the other Gluster tests) -------------------------------------------
def serialized_dict(pairs: dict[str, bytes]) -> bytes:
    """What dict_serialize() produces: count, then (keylen, vallen, key NUL, value) per pair."""
    out = struct.pack(">i", len(pairs))
    for k, v in pairs.items():
        out += struct.pack(">II", len(k), len(v)) + k.encode() + b"\0" + v
    return out


def dict3(pairs: dict[str, bytes]) -> bytes:
    return Packer().opaque(serialized_dict(pairs) if pairs else b"").bytes()


def gfx_dict(pairs: list[tuple[str, int, object]]) -> bytes:
    """gfx_dict: (key, gf_dict_data_type_t, value) triples."""
    # xdr_size: what dict_to_xdr() reports, roughly the keys and values it carries
    xdr_size = sum(len(k) + 1 + 16 for k, _, _ in pairs)
    p = Packer().uint32(xdr_size).int32(len(pairs)).uint32(len(pairs))
    for key, kind, value in pairs:
        p.opaque(key.encode() + b"\0").int32(kind)
        if kind == dicts.GF_DATA_TYPE_INT:
            p.int64(value)
        elif kind == dicts.GF_DATA_TYPE_UINT:
            p.uint64(value)
        elif kind == dicts.GF_DATA_TYPE_DOUBLE:
            p.double(value)
        elif kind == dicts.GF_DATA_TYPE_GFUUID:
            p.fopaque(value)
        else:
            p.opaque(value)
    return p.bytes()


# -- tests ------------------------------------------------------------------------------------
def test_v3_dict_text_and_binary_values():
    data = dict3({"process-uuid": b"host-1234\0", "ERROR": b"Authentication failed\0",
                  "blob": b"\x00\x01\xfe"})
    assert dicts.dict3(Unpacker(data)) == {"process-uuid": "host-1234",
                                           "ERROR": "Authentication failed", "blob": "0x0001fe"}


def test_v3_empty_dict():
    assert dicts.dict3(Unpacker(Packer().opaque(b"").bytes())) == {}


def test_v3_pair_overrunning_buffer_is_an_error():
    raw = struct.pack(">i", 1) + struct.pack(">II", 3, 1000) + b"key\0" + b"short"
    with pytest.raises(DecodeError, match="pair 0 wants 3\\+1\\+1000 bytes"):
        dicts.parse_serialized(raw)


def test_v3_absurd_count_is_refused():
    raw = struct.pack(">i", 0x7FFFFFFF) + b"\0" * 16
    with pytest.raises(DecodeError, match="implausible pair count"):
        dicts.parse_serialized(raw)
    with pytest.raises(DecodeError, match="implausible pair count -1"):
        dicts.parse_serialized(struct.pack(">i", -1) + b"\0" * 16)


def test_v4_typed_values():
    u = uuid.UUID("0b4d3b8e-5a79-4d2c-9f0e-1d2c3b4a5968")
    data = gfx_dict([("count", dicts.GF_DATA_TYPE_INT, -3), ("size", dicts.GF_DATA_TYPE_UINT, 2**63),
                     ("ratio", dicts.GF_DATA_TYPE_DOUBLE, 0.5), ("name", dicts.GF_DATA_TYPE_STR, b"vol0\0"),
                     ("gfid-req", dicts.GF_DATA_TYPE_GFUUID, u.bytes),
                     ("raw", dicts.GF_DATA_TYPE_PTR, b"\x00\xff")])
    assert dicts.dict4(Unpacker(data)) == {"count": -3, "size": 2**63, "ratio": 0.5, "name": "vol0",
                                           "gfid-req": str(u), "raw": "0x00ff"}


def test_v4_unknown_type_is_an_error():
    data = Packer().uint32(0).int32(1).uint32(1).opaque(b"k\0").int32(77).bytes()
    with pytest.raises(DecodeError, match="unknown data type 77"):
        dicts.dict4(Unpacker(data))


def test_v4_absurd_pair_count():
    data = Packer().uint32(0).int32(1).uint32(10**6).bytes()
    with pytest.raises(DecodeError, match="exceed the limit"):
        dicts.dict4(Unpacker(data))


def test_dict_any_reads_both():
    assert dicts.dict_any(Unpacker(dict3({"a": b"1\0"}))) == {"a": "1"}
    assert dicts.dict_any(Unpacker(gfx_dict([("a", dicts.GF_DATA_TYPE_STR, b"1\0")]))) == {"a": "1"}


def test_values_are_capped_and_control_characters_become_hex():
    long_text = b"x" * 5000
    shown = dicts.render(long_text)
    assert shown.startswith("x" * dicts.MAX_SHOWN_TEXT) and shown.endswith("(5000 bytes)")
    assert dicts.render(b"\x1b[31mred") == "0x" + b"\x1b[31mred".hex()   # no escape codes as text
    big = dicts.render(bytes(range(256)))
    assert big.endswith("...(256 bytes)") and len(big) < 200


_VALUES = st.one_of(
    st.tuples(st.just(dicts.GF_DATA_TYPE_INT), st.integers(-2**63, 2**63 - 1)),
    st.tuples(st.just(dicts.GF_DATA_TYPE_UINT), st.integers(0, 2**64 - 1)),
    st.tuples(st.sampled_from([dicts.GF_DATA_TYPE_STR, dicts.GF_DATA_TYPE_PTR]),
              st.binary(max_size=40) | st.text(max_size=20).map(str.encode)),
    st.tuples(st.just(dicts.GF_DATA_TYPE_GFUUID), st.binary(min_size=16, max_size=16)),
    st.tuples(st.just(dicts.GF_DATA_TYPE_DOUBLE), st.floats(allow_nan=False)),
)


@settings(max_examples=300, deadline=2000)
@given(st.lists(st.tuples(st.text(max_size=12), _VALUES), max_size=5),
       st.lists(st.tuples(st.integers(0, 400), st.sampled_from([0, 3, 0x80, 0xFF])), max_size=2),
       st.integers(-1, 300))
def test_gfx_dict_fast_path_reads_like_field_by_field(pairs, edits, cut):
    """Same pairs, same end position, same error, whatever the bytes."""
    data = bytearray(gfx_dict([(k, kind, v) for k, (kind, v) in pairs]) + b"tail")
    for at, value in edits:
        data[at % len(data)] = value
    data = bytes(data[:cut]) if cut >= 0 else bytes(data)
    outcomes = []
    for read in (dicts.dict4, dicts._dict4_slowly):
        u = Unpacker(data, 0, base=100)
        try:
            outcomes.append((read(u), u.pos))
        except DecodeError as exc:
            outcomes.append(str(exc))
    # as text: an edited double may read as NaN, which never equals itself
    assert repr(outcomes[0]) == repr(outcomes[1])
