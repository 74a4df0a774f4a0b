# C types for record_marking.py (Cython reads this beside the .py; the .py stays the
# reference). Offsets, marks and header words are C integers: each is at most 32 bits read
# from the stream, or a position inside a buffer.
cimport cython

cdef class Record:
    cdef public object data, length, time_ns, lost

cdef class Direction:
    cdef public object state
    cdef public bytearray buf, record
    # lengths inside one record (at most MAX_RECORD) and stream offsets: C integers
    cdef public Py_ssize_t record_len, record_lost, frag_left, consumed
    cdef public object record_time, buf_time
    cdef public bint last_frag, fresh

cdef class RecordFramer:
    cdef public object diag
    cdef public Py_ssize_t max_record

    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t, word=Py_ssize_t, length=Py_ssize_t,
                   start=Py_ssize_t)
    cpdef _whole_records(self, pending, bint from_client, Direction d, time_ns, data)

    @cython.locals(i=Py_ssize_t, old=Py_ssize_t, take=Py_ssize_t, room=Py_ssize_t,
                   word=Py_ssize_t, length=Py_ssize_t)
    cpdef list feed(self, conn, pending, bint from_client, Direction d, time_ns, data)

    cpdef list _end_fragment(self, Direction d)

    @cython.locals(xid=Py_ssize_t, mtype=Py_ssize_t, third=Py_ssize_t, prog=Py_ssize_t,
                   vers=Py_ssize_t, proc=Py_ssize_t, flavor=Py_ssize_t, cred_len=Py_ssize_t)
    cpdef bint _plausible(self, pending, bint from_client, buf, Py_ssize_t at, Py_ssize_t n,
                          bint strict)
