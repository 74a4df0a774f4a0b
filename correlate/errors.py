"""Errors that reach the user as one clear line (never a traceback)."""
from . import exit_codes


class CorrelateError(Exception):
    """Base for errors the CLI prints as `correlate: <message>` and exits with `exit_code`
    (correlate.exit_codes: 2, a usage error or an input that cannot be read)."""

    exit_code = exit_codes.INPUT


class InputError(CorrelateError):
    """An input cannot be read at all (not a capture, unknown link type, missing file).

    `where` names the input and the place (byte offset, packet number, line)."""

    def __init__(self, source: str, message: str, where: str | None = None):
        self.source = source
        self.where = where
        place = f" at {where}" if where else ""
        super().__init__(f"{source}{place}: {message}")

    def __reduce__(self):     # whole across processes (a decoding process reports it)
        return _input_error, (self.source, str(self), self.where)


def _input_error(source: str, text: str, where: str | None) -> InputError:
    err = InputError.__new__(InputError)
    Exception.__init__(err, text)
    err.source, err.where = source, where
    return err


def what_it_starts_with(head: bytes) -> str:
    """The same words in every command for an input of the wrong kind."""
    return "empty input" if not head else f"starts with {head[:16].hex(' ')}"


# gzip data ending early or corrupt, in every command and for every kind of input
GZIP_DAMAGE = "the gzip data is cut short or corrupt"


class DecodeError(CorrelateError):
    """The one error a decoder of untrusted bytes raises (XDR, RPC, Gluster arguments)."""


class OutputError(CorrelateError):
    """An output cannot be written (a missing directory, a full disk, no permission)."""

    exit_code = exit_codes.OUTPUT


def open_output(path: str, mode: str = "w", **kwargs):
    """open() for a file the user named as an output: its failure is one line naming it."""
    try:
        return open(path, mode, **kwargs)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
