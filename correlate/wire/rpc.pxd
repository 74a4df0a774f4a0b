# C types for rpc.py (Cython reads this beside the .py; the .py stays the reference): the
# calls waiting for their replies and the per-connection state are C structs, and the
# per-record path (record -> header -> event dict) calls C functions on typed records and
# headers: their fields are struct reads, not attribute lookups by name.
cimport cython
from .record_marking cimport Record
from .rpc_header cimport CallHeader, ReplyHeader

cdef class _Pending:
    cdef public object prog, vers, proc, info, time_ns, context, later, cost

cdef class _ConnState:
    cdef public dict dirs
    cdef public object pending, pending_bytes, tls

cdef class RpcSink:
    cdef public object source, diag, details, _details_for, keylog, max_pending, framer
    cdef public object _conns, _pending_bytes
    cdef public bint details_later

    cpdef list _records_to_events(self, conn, _ConnState st, bint from_client, list records)
    cpdef dict _record_event(self, conn, _ConnState st, bint from_client, Record rec)
    cpdef bint _wants_details(self, procedure, Record rec)
    cpdef dict _call_event(self, conn, _ConnState st, bint from_client, Record rec,
                           CallHeader hdr, src, dst)
    cpdef _forgotten(self, _ConnState st, _Pending call)
    cpdef dict _reply_event(self, conn, _ConnState st, bint from_client, Record rec,
                            ReplyHeader hdr, src, dst)
    cpdef _ConnState _state(self, conn)

cpdef dict _call_dict(source, Record rec, CallHeader hdr, info, src, dst, conn, bint details)
cpdef dict _reply_dict(source, Record rec, ReplyHeader hdr, _Pending call, src, dst, conn,
                       bint details)
cpdef _set_status(dict ev, result)
