/* The records both FUSE programs send and the maps the collector reads: fuse_events.c (the
 * kernel's fuse tracepoints) and fuse_uprobes.c (the fallback on the FUSE client's
 * readv/writev). One Python mirror reads both; the loader puts this file where a program
 * says #include "fuse_records.h" (NAME_LEN and the OP_ numbers are the program's). */

struct fuse_event_t {
    u64 ts_send;        /* 0: sent before the probes started */
    u64 ts_end;
    u64 unique;
    u64 nodeid;
    u64 out_nodeid;     /* LOOKUP/CREATE/MKDIR/MKNOD: the node the reply names */
    u32 opcode;
    s32 error;
    u32 uid;
    u32 gid;
    u32 hpid;           /* the request header's pid: the requesting thread */
    u32 send_tgid;
    u32 send_tid;
    u32 end_tid;
    u32 dev;
    u32 pending;        /* 1: still unanswered (sent by the collector's scan, not here) */
    u32 sys_nr;         /* the requester's system call (NR_UNKNOWN: none known) */
    u32 in_syscall;     /* 1: its system call's exit is traced (a sys event follows) */
    u32 pad;
    u32 pad2;
    u64 sys_arg0;
    char comm[16];      /* the sending thread's */
    char name[NAME_LEN];
};

struct name_t {
    u64 parent;
    char name[NAME_LEN];
};

struct key_t {
    u64 unique;
    u32 dev;
    u32 pad;
};

/* Negative lookups, absent extended attributes, unimplemented opcodes: everyday answers. */
static __always_inline int expected_error(u32 op, s32 err) {
    if (op == OP_LOOKUP && err == -2)
        return 1;
    if ((op == OP_GETXATTR || op == OP_LISTXATTR || op == OP_REMOVEXATTR) &&
        (err == -61 || err == -95 || err == -34))
        return 1;
    if (op == OP_INTERRUPT || err == -38)
        return 1;
    return 0;
}
