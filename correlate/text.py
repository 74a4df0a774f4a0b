"""Text from any input made safe for a terminal or a one-line message: control characters
(escape sequences included), line and bidi overrides and lone surrogates are shown as \\xNN
or \\uNNNN, never interpreted, and long values are bounded."""
from __future__ import annotations

import re

# Control characters, line and bidi overrides, and lone surrogates (which no terminal encoding
# can write).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 256 else f"\\u{c:04x}"


def safe_text(value, limit: int = 300) -> str:
    """Printable, single-line, bounded text from anything (wire bytes included)."""
    s = value if isinstance(value, str) else str(value)
    if len(s) > limit:
        s = s[:limit] + "..."
    return _CONTROL.sub(_escape, s).replace("\n", "\\n")


def safe_line(line: str) -> str:
    """A whole composed line made printable (a last guard: fields are escaped already)."""
    return _CONTROL.sub(_escape, line).replace("\n", "\\n")
