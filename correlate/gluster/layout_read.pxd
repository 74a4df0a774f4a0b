# C types for layout_read.py (Cython reads this beside the .py; the .py stays the reference).
cimport cython

cdef class StructReader:
    cdef public tuple steps
    cdef public object slow
