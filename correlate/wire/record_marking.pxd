# C types for record_marking.py (Cython reads this beside the .py; the .py stays the
# reference). Offsets, marks and header words are C integers: each is at most 32 bits read
# from the stream, or a position inside a buffer.
cimport cython

cdef class RecordFramer:
    cdef public object diag
    cdef public Py_ssize_t max_record

    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t, word=Py_ssize_t, length=Py_ssize_t,
                   start=Py_ssize_t)
    cpdef _whole_records(self, pending, bint from_client, d, time_ns, data)

    @cython.locals(xid=Py_ssize_t, mtype=Py_ssize_t, third=Py_ssize_t, prog=Py_ssize_t,
                   vers=Py_ssize_t, proc=Py_ssize_t, flavor=Py_ssize_t, cred_len=Py_ssize_t)
    cpdef bint _plausible(self, pending, bint from_client, buf, Py_ssize_t at, Py_ssize_t n,
                          bint strict)
