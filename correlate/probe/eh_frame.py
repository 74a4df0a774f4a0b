"""The function ranges an .eh_frame section describes: one (start, end) per FDE, read from
untrusted bytes (every length bounded by the buffer and MAX_FDES; a damaged record ends the
walk, never raises). elf_functions.py uses them to bound the static functions of a stripped file.
"""
from __future__ import annotations

import struct

MAX_FDES = 1_000_000
MAX_FUNCTION_BYTES = 1024 * 1024     # a single function larger than this is not scanned


def _leb128(buf: bytes, pos: int, signed: bool) -> tuple[int, int]:
    """A DWARF LEB128 number at buf[pos], bounded to 10 bytes; returns (value, next position)."""
    result = shift = 0
    while pos < len(buf) and shift < 70:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if signed and b & 0x40:
                result -= 1 << shift
            return result, pos
    raise ValueError("bad LEB128")


def _uleb(buf: bytes, pos: int) -> tuple[int, int]:
    return _leb128(buf, pos, False)


def _sleb(buf: bytes, pos: int) -> tuple[int, int]:
    return _leb128(buf, pos, True)


def _read_encoded(buf: bytes, pos: int, enc: int, base_addr: int, little: bool, is64: bool) -> tuple[int, int]:
    """A DW_EH_PE_* encoded pointer at buf[pos]; returns (value, next position)."""
    e = "<" if little else ">"
    fmt = enc & 0x0F
    start = pos
    if fmt == 0x00:
        code = "Q" if is64 else "I"
    elif fmt == 0x01:
        value, pos = _uleb(buf, pos)
        code = None
    elif fmt == 0x09:
        value, pos = _sleb(buf, pos)
        code = None
    else:
        code = {0x02: "H", 0x03: "I", 0x04: "Q", 0x0A: "h", 0x0B: "i", 0x0C: "q"}.get(fmt)
        if code is None:
            raise ValueError(f"pointer encoding {enc:#x}")
    if code is not None:
        size = struct.calcsize(code)
        if pos + size > len(buf):
            raise ValueError("pointer past end")
        value = struct.unpack_from(e + code, buf, pos)[0]
        pos += size
    if (enc & 0x70) == 0x10:   # DW_EH_PE_pcrel: relative to the field's own address
        value += base_addr + start
    return value & 0xFFFFFFFFFFFFFFFF, pos


def parse_eh_frame(buf: bytes, section_addr: int, little: bool = True, is64: bool = True) -> list[tuple[int, int]]:
    """FDE address ranges from an .eh_frame section; stops quietly at the first damage."""
    e = "<" if little else ">"
    cie_encoding: dict[int, int] = {}
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos + 8 <= len(buf) and len(ranges) < MAX_FDES:
        length = struct.unpack_from(e + "I", buf, pos)[0]
        if length == 0:             # terminator
            break
        hdr = 4
        if length == 0xFFFFFFFF:
            if pos + 12 > len(buf):
                break
            length = struct.unpack_from(e + "Q", buf, pos + 4)[0]
            hdr = 12
        body = pos + hdr
        end = body + length
        if end > len(buf) or length < 4:
            break
        try:
            cie_id = struct.unpack_from(e + "I", buf, body)[0]
            if cie_id == 0:
                cie_encoding[pos] = _cie_fde_encoding(buf[:end], body + 4)
            else:
                cie_pos = body - cie_id
                enc = cie_encoding.get(cie_pos)
                if enc is not None:
                    start, p = _read_encoded(buf[:end], body + 4, enc, section_addr, little, is64)
                    size, _ = _read_encoded(buf[:end], p, enc & 0x0F, 0, little, is64)
                    if 0 < size <= MAX_FUNCTION_BYTES:
                        ranges.append((start, start + size))
        except (ValueError, struct.error):
            pass    # one damaged record: skip it, keep the rest
        pos = end
    return ranges


def _cie_fde_encoding(buf: bytes, pos: int) -> int:
    """The FDE pointer encoding a CIE declares ('R' augmentation), default absolute."""
    version = buf[pos]
    pos += 1
    aug_end = buf.find(b"\0", pos, pos + 64)
    if aug_end < 0:
        raise ValueError("CIE augmentation string unterminated")
    aug = buf[pos:aug_end].decode("ascii", "replace")
    pos = aug_end + 1
    if "eh" in aug:
        pos += 8
    _, pos = _uleb(buf, pos)            # code alignment
    _, pos = _sleb(buf, pos)            # data alignment
    if version == 1:
        pos += 1                        # return address register
    else:
        _, pos = _uleb(buf, pos)
    encoding = 0x00
    if aug.startswith("z"):
        _, pos = _uleb(buf, pos)        # augmentation data length
        for ch in aug[1:]:
            if pos >= len(buf):
                raise ValueError("CIE augmentation past end")
            if ch == "R":
                encoding = buf[pos]
                pos += 1
            elif ch == "P":
                penc = buf[pos]
                _, pos = _read_encoded(buf, pos + 1, penc & 0x7F, 0, True, True)
            elif ch == "L":
                pos += 1
            elif ch in "SB":
                pass
            else:
                break
    return encoding


# ---- loading --------------------------------------------------------------------------------
