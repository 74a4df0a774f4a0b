"""Registry of the Gluster RPC programs: number -> name, and per version the procedures.

`lookup(prog, vers, proc)` is what the RPC layer calls for every message.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .cbk import CBK_PROGRAM
from .dump import DUMP_PROGRAM
from .fops import FOP_PROGRAM
from .glusterd import GLUSTERD_PROGRAMS
from .handshake import HANDSHAKE_PROGRAM
from .portmap import PORTMAP_PROGRAM
from .programs_base import Procedure, Program

REGISTRY: dict[int, Program] = {
    p.number: p for p in [FOP_PROGRAM, HANDSHAKE_PROGRAM, PORTMAP_PROGRAM, DUMP_PROGRAM,
                          CBK_PROGRAM, *GLUSTERD_PROGRAMS]
}


@dataclass(frozen=True, slots=True)
class Lookup:
    program: str | None          # program name, None when the number is unknown
    procedure: str | None        # procedure name, None when version or number is unknown
    decoders: Procedure | None
    expects_reply: bool = True
    key: tuple[int, int, int] | None = None     # (prog, vers, proc) it was looked up by

    def __reduce__(self):
        # The decoders are compiled functions, not picklable: a copy is looked up again (an
        # event decoded in another process carries its Lookup to complete its details).
        if self.key is not None:
            return lookup, self.key
        return Lookup, (self.program, self.procedure, None, self.expects_reply)


@lru_cache(maxsize=4096)          # asked for every message; bounded against hostile numbers
def lookup(prog: int, vers: int, proc: int) -> Lookup:
    program = REGISTRY.get(prog)
    if program is None:
        return Lookup(None, None, None)
    procedure = program.versions.get(vers, {}).get(proc)
    return Lookup(program.name, procedure.name if procedure else None, procedure,
                  program.expects_reply, (prog, vers, proc))


def is_known_program(prog: int) -> bool:
    return prog in REGISTRY
