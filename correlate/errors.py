"""Errors that reach the user as one clear line (never a traceback)."""


class CorrelateError(Exception):
    """Base for errors the CLI prints as `correlate: <message>` and exits non-zero."""


class InputError(CorrelateError):
    """An input cannot be read at all (not a capture, unknown link type, missing file).

    `where` names the input and the place (byte offset, packet number, line)."""

    def __init__(self, source: str, message: str, where: str | None = None):
        self.source = source
        self.where = where
        place = f" at {where}" if where else ""
        super().__init__(f"{source}{place}: {message}")


class DecodeError(CorrelateError):
    """The one error a decoder of untrusted bytes raises (XDR, RPC, Gluster arguments)."""
