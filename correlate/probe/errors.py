"""The probe layer's errors: each one line that says what to do (the CLI prints it, exits 2)."""
from __future__ import annotations

import os
import platform

from ..errors import CorrelateError

BCC_HINT = ("apt-get install python3-bpfcc, and build the venv with "
            "/usr/bin/python3 -m venv --system-site-packages so that `import bcc` works")


class ProbeError(CorrelateError):
    """Base for probe errors."""


class NotRoot(ProbeError):
    def __init__(self):
        super().__init__(f"probes need root (running as uid {os.geteuid()}): run as root")


class BccMissing(ProbeError):
    def __init__(self, detail: str = ""):
        super().__init__(f"bcc is not importable{(' (' + detail + ')') if detail else ''}: {BCC_HINT}")


class KernelHeadersMissing(ProbeError):
    def __init__(self, path: str):
        super().__init__(f"kernel headers missing: {path} does not exist; install linux-headers-amd64 "
                         f"and run `bash tests/lab/host-setup.sh` (links {path} to /usr/src/linux-headers-*)")


class LibraryNotFound(ProbeError):
    def __init__(self, library: str, looked: list[str]):
        super().__init__(f"library {library} not found (looked in {', '.join(looked)}); "
                         "install it or name its path")


class SymbolNotResolvable(ProbeError):
    def __init__(self, function: str, detail: str):
        super().__init__(f"cannot locate {function}: {detail}; pass --probe-offset {function}=0xADDRESS")


class BackendUnavailable(ProbeError):
    """No backend can run; the message names what was tried and what to install."""


def kernel_headers_dir() -> str:
    return f"/lib/modules/{platform.release()}/build"
