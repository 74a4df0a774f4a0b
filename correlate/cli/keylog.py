"""--tls-keylog FILE, the same on every command that decodes captures, and the key log a
`run --probe tls-keys` writes when none is named."""
from __future__ import annotations

import os
import tempfile

import click

from ..wire.tls_keys import KeyLog, KeyLogError


def keylog_option(f):
    return click.option(
        "--tls-keylog", "tls_keylog", metavar="FILE", type=click.Path(dir_okay=False),
        help="Decrypt TLS volumes' connections in captures with this NSS key log "
             "(SSLKEYLOGFILE format: what `correlate run --probe tls-keys` writes, or "
             "Wireshark's tls.keylog_file).")(f)


def open_keylog(path: str | None, follow: bool = False) -> KeyLog | None:
    """The key log to decrypt with, or None; an unreadable file is a usage error (exit 2).
    follow: it is still being written (a live run), read again as it grows."""
    if path is None:
        return None
    try:
        return KeyLog(path, follow=follow)
    except KeyLogError as exc:
        raise click.BadParameter(str(exc), param_hint="--tls-keylog") from None


def keylog_to_write(path: str | None) -> tuple[str, str | None]:
    """Where `--probe tls-keys` writes keys: the named file (created mode 0600 if new), or a
    private temporary one; (path, the temporary directory to remove after the run)."""
    if path is not None:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600))
        except OSError as exc:
            raise click.BadParameter(f"{path}: {exc.strerror or exc}",
                                     param_hint="--tls-keylog") from None
        return path, None
    directory = tempfile.mkdtemp(prefix="correlate-keys-")
    path = os.path.join(directory, "tls-keys.log")
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    return path, directory
