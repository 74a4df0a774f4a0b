# C types for capture.py (Cython reads this beside the .py; the .py stays the reference).
# Two reads per packet go through _Input: its buffer and positions are C fields, its reads
# C calls.
cimport cython

cdef class Frame:
    cdef public object time_ns, linktype, data, number, orig_len

cdef class _Input:
    cdef public object _pull
    cdef public bytes _buf
    cdef public Py_ssize_t _pos
    cdef public Py_ssize_t consumed

    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t)
    cpdef bytes read(self, Py_ssize_t n)
    @cython.locals(have=Py_ssize_t)
    cpdef bytes _read_slow(self, Py_ssize_t n)
    cpdef bytes peek(self, Py_ssize_t n)

cdef class _RawInput(_Input):
    cpdef bytes read1_for_gzip(self)
