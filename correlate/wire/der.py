"""Just enough DER (X.690) to read who a certificate names and when it is valid: subject,
issuer and validity of an X.509 certificate (RFC 5280 section 4.1), as a TLS 1.2 handshake
sends it in clear. Bounded: every length is checked against the bytes present, nesting is
fixed by the structure read, and anything unexpected gives None, never an exception."""
from __future__ import annotations

import calendar

# attribute OIDs shown in a name, in the order openssl prints them
_NAME_OIDS = {b"\x55\x04\x06": "C", b"\x55\x04\x08": "ST", b"\x55\x04\x07": "L",
              b"\x55\x04\x0a": "O", b"\x55\x04\x0b": "OU", b"\x55\x04\x03": "CN"}
MAX_NAME_ATTRS = 32


class _Bad(Exception):
    pass


def _tlv(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the element at pos."""
    if pos + 2 > end:
        raise _Bad
    tag, first = buf[pos], buf[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise _Bad
        length = int.from_bytes(buf[pos:pos + n], "big")
        pos += n
    if pos + length > end:
        raise _Bad
    return tag, pos, pos + length


def _name(buf: bytes, start: int, end: int) -> str:
    """RDNSequence -> "CN=x, O=y" (the attributes this module knows)."""
    parts = []
    pos = start
    while pos < end and len(parts) < MAX_NAME_ATTRS:
        _, s, e = _tlv(buf, pos, end)           # SET
        pos = e
        inner = s
        while inner < e:
            _, as_, ae = _tlv(buf, inner, e)     # SEQUENCE { OID, value }
            inner = ae
            tag, os_, oe = _tlv(buf, as_, ae)
            if tag != 0x06:
                raise _Bad
            vtag, vs, ve = _tlv(buf, oe, ae)
            key = _NAME_OIDS.get(bytes(buf[os_:oe]))
            if key and vtag in (0x0C, 0x13, 0x16, 0x14, 0x1E):
                value = bytes(buf[vs:ve]).decode("utf-8" if vtag != 0x1E else "utf-16-be",
                                                 "replace")
                parts.append(f"{key}={value}")
    return ", ".join(parts)


def _time(buf: bytes, tag: int, start: int, end: int) -> int:
    """UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) -> ns since the epoch."""
    text = bytes(buf[start:end]).decode("ascii", "replace")
    if tag == 0x17 and len(text) == 13 and text.endswith("Z") and text[:12].isdigit():
        year = int(text[:2])
        year += 1900 if year >= 50 else 2000       # RFC 5280 4.1.2.5.1
        digits = text[2:12]
    elif tag == 0x18 and len(text) == 15 and text.endswith("Z") and text[:14].isdigit():
        year, digits = int(text[:4]), text[4:14]
    else:
        raise _Bad
    mon, day, hh, mm, ss = (int(digits[i:i + 2]) for i in range(0, 10, 2))
    if not (1 <= mon <= 12 and 1 <= day <= 31 and hh < 24 and mm < 60 and ss <= 60):
        raise _Bad
    return calendar.timegm((year, mon, day, hh, mm, ss)) * 1_000_000_000


def certificate_summary(der: bytes) -> dict | None:
    """{"subject", "issuer", "not_before_ns", "not_after_ns"} of an X.509 certificate, or
    None when it cannot be read."""
    try:
        _, cs, ce = _tlv(der, 0, len(der))              # Certificate
        tag, ts, te = _tlv(der, cs, ce)                 # TBSCertificate
        if tag != 0x30:
            raise _Bad
        pos = ts
        tag, s, e = _tlv(der, pos, te)
        if tag == 0xA0:                                 # [0] version
            pos = e
        fields = []
        for _ in range(5):      # serial, signature, issuer, validity, subject
            fields.append(_tlv(der, pos, te))
            pos = fields[-1][2]
        _, is_, ie = fields[2]
        _, vs, ve = fields[3]
        _, ss, se = fields[4]
        t1, b1, e1 = _tlv(der, vs, ve)
        t2, b2, e2 = _tlv(der, e1, ve)
        return {"subject": _name(der, ss, se), "issuer": _name(der, is_, ie),
                "not_before_ns": _time(der, t1, b1, e1), "not_after_ns": _time(der, t2, b2, e2)}
    except (_Bad, ValueError, OverflowError):
        return None
