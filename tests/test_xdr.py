"""The bounded XDR Unpacker (RFC 4506) against bytes built with the Packer."""
import pytest

from correlate.errors import DecodeError
from correlate.xdr import Packer, Unpacker


def test_integers_round_trip_with_sign():
    data = (Packer().uint32(0xFFFFFFFF).int32(-1).uint64(2**64 - 1).int64(-1)
            .int64(-(2**63)).double(1.5).bool(True).bool(False).bytes())
    u = Unpacker(data)
    assert u.uint32() == 0xFFFFFFFF
    assert u.int32() == -1
    assert u.uint64() == 2**64 - 1
    assert u.int64() == -1          # an atime of -1 must stay -1
    assert u.int64() == -(2**63)
    assert u.double() == 1.5
    assert u.bool() is True and u.bool() is False
    assert u.at_end()


def test_bool_other_than_0_or_1_is_an_error():
    with pytest.raises(DecodeError, match="boolean is 2"):
        Unpacker(Packer().uint32(2).bytes()).bool()


def test_enum_names_and_unknown_values():
    data = Packer().int32(1).int32(7).bytes()
    u = Unpacker(data)
    assert u.enum({1: "ONE"}) == "ONE"
    assert u.enum({1: "ONE"}) == 7


def test_opaque_and_string_padding():
    data = Packer().opaque(b"abcde").string("xy").fopaque(b"\x01\x02\x03").uint32(9).bytes()
    assert len(data) == 4 + 8 + 4 + 4 + 4 + 4
    u = Unpacker(data)
    assert u.opaque() == b"abcde"
    assert u.string() == "xy"
    assert u.fopaque(3) == b"\x01\x02\x03"
    assert u.uint32() == 9


def test_string_drops_one_trailing_nul_and_escapes_bad_utf8():
    u = Unpacker(Packer().opaque(b"vol\0").opaque(b"\xff\xfeok").bytes())
    assert u.string() == "vol"
    assert u.string() == "\\xff\\xfeok"


def test_string_escapes_terminal_control_characters():
    u = Unpacker(Packer().string("evil\x1b[2J\nname\u202e").bytes())
    assert u.string() == "evil\\x1b[2J\\x0aname\\u202e"


def test_truncated_integer_names_what_and_where():
    u = Unpacker(b"\0\0\0\1\0\0")
    u.uint32()
    with pytest.raises(DecodeError, match=r"op_ret: needs 4 bytes, 2 left at offset 4"):
        u.int32("op_ret")


def test_absurd_opaque_length_is_refused_before_allocation():
    # 0xFFFFFFF0 bytes announced, 4 present: must fail fast, naming the length.
    data = Packer().uint32(0xFFFFFFF0).raw(b"abcd").bytes()
    with pytest.raises(DecodeError, match="length 4294967280 but only 4 bytes left at offset 0"):
        Unpacker(data).opaque("dict")


def test_opaque_limit():
    data = Packer().opaque(b"x" * 100).bytes()
    with pytest.raises(DecodeError, match="exceeds the limit 10"):
        Unpacker(data).opaque("name", 10)


def test_opaque_padding_must_be_present():
    # length 5 needs 8 bytes of content + padding; only 5 are there
    data = Packer().uint32(5).raw(b"abcde").bytes()
    with pytest.raises(DecodeError):
        Unpacker(data).opaque()


def test_array_count_cap_and_bytes_left():
    ok = Packer().uint32(3).uint32(1).uint32(2).uint32(3).bytes()
    assert Unpacker(ok).array(lambda u: u.uint32()) == [1, 2, 3]
    with pytest.raises(DecodeError, match="exceed the limit 2"):
        Unpacker(ok).array(lambda u: u.uint32(), max_count=2)
    huge = Packer().uint32(1_000_000).uint32(1).bytes()
    with pytest.raises(DecodeError, match="cannot fit"):
        Unpacker(huge).array(lambda u: u.uint32(), max_count=10**9)


def test_optional_and_linked_list():
    data = (Packer().bool(True).uint32(5)
            .bool(True).string("a").bool(True).string("b").bool(False).bytes())
    u = Unpacker(data)
    assert u.optional(lambda x: x.uint32()) == 5
    assert u.linked_list(lambda x: x.string()) == ["a", "b"]


def test_linked_list_cap():
    p = Packer()
    for _ in range(5):
        p.bool(True).uint32(1)
    p.bool(False)
    with pytest.raises(DecodeError, match="more than 3 entries"):
        Unpacker(p.bytes()).linked_list(lambda x: x.uint32(), max_count=3)


def test_memoryview_input_and_base_offset_in_messages():
    data = bytearray(Packer().uint32(7).bytes())
    u = Unpacker(memoryview(data), base=100)
    assert u.uint32() == 7
    with pytest.raises(DecodeError, match="offset 104"):
        u.uint32("next")


def test_skip_opaque_and_rest():
    data = Packer().opaque(b"payload").raw(b"tail").bytes()
    u = Unpacker(data)
    assert u.skip_opaque() == 7
    assert u.rest() == b"tail"
    assert u.at_end()
