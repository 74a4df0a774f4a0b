/* FUSE requests and replies where the kernel has no fuse tracepoints (before Linux 6.12):
 * seen from the file system daemon's side. The glusterfs FUSE client reads each request
 * from /dev/fuse with readv(fd, iov, 2) (iov[0] the fuse_in_header, iov[1] the arguments)
 * and writes each reply with writev(fd, iov, n) (iov[0] the fuse_out_header, iov[1] the
 * payload). Uprobes on libc's readv (return) and writev (entry), attached per client
 * process, keep only calls on that process's /dev/fuse fd (`fuse_fds`, filled by the
 * collector) and send the same records as fuse_events.c, by the same rules: failed
 * requests (bar everyday answers) and requests that took SLOW_NS or more; names of
 * LOOKUP/CREATE/MKDIR/MKNOD replies kept in `names`.
 *
 * The requester is the in-header's pid only (the sending thread is not seen here), and the
 * application's system calls are not followed (that needs the tracepoints' send side).
 */
#include <uapi/linux/ptrace.h>

#define NAME_LEN 128
#define IN_HEADER_LEN 40
#define FIRST_MAX 63                /* bytes of a name read from iov[0], at most */
#define OP_LOOKUP 1
#define OP_MKNOD 8
#define OP_MKDIR 9
#define OP_GETXATTR 22
#define OP_LISTXATTR 23
#define OP_REMOVEXATTR 24
#define OP_CREATE 35
#define OP_INTERRUPT 36
#define NR_UNKNOWN 0xffffffff

struct fuse_in_header_t {   /* include/uapi/linux/fuse.h: the protocol, fixed */
    u32 len;
    u32 opcode;
    u64 unique;
    u64 nodeid;
    u32 uid;
    u32 gid;
    u32 pid;
    u16 total_extlen;
    u16 padding;
};

struct fuse_out_header_t {
    u32 len;
    s32 error;
    u64 unique;
};

struct iov_t {
    u64 base;
    u64 len;
};

/* the first members as fuse_events.c's, which the collector's pending scan reads */
struct inflight_t {
    u64 ts;
    u64 nodeid;
    u32 opcode;
    u32 hpid;
    u32 tgid;
    u32 tid;
    char comm[16];
    u32 uid;
    u32 gid;
    char name[NAME_LEN];
};

#include "fuse_records.h"

struct reading_t {
    u64 iov;
    u32 dev;
    u32 pad;
};

BPF_HASH(fuse_fds, u64, u32, 256);           /* tgid << 32 | fd -> the mount's dev */
BPF_HASH(reading, u32, struct reading_t, 1024);
BPF_HASH(inflight, struct key_t, struct inflight_t, 16384);
BPF_TABLE("lru_hash", u64, struct name_t, names, 32768);
BPF_PERCPU_ARRAY(scratch, struct fuse_event_t, 1);
BPF_PERCPU_ARRAY(in_scratch, struct inflight_t, 1);
BPF_PERCPU_ARRAY(name_scratch, struct name_t, 1);
BPF_PERF_OUTPUT(events);

static __always_inline u32 *fuse_fd(u64 fd) {
    u64 key = (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | (u32)fd;
    return fuse_fds.lookup(&key);
}

int readv_enter(struct pt_regs *ctx) {
    u32 *dev = fuse_fd(PT_REGS_PARM1(ctx));
    if (!dev)
        return 0;
    struct reading_t r = {.iov = PT_REGS_PARM2(ctx), .dev = *dev};
    u32 tid = (u32)bpf_get_current_pid_tgid();
    reading.update(&tid, &r);
    return 0;
}

/* A request read: keep it until its reply, with the name a naming request carries. */
int readv_return(struct pt_regs *ctx) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct reading_t *r = reading.lookup(&tid);
    if (!r)
        return 0;
    long ret = PT_REGS_RC(ctx);
    struct iov_t iov[2] = {};
    struct fuse_in_header_t h = {};
    int zero = 0;
    struct inflight_t *v = in_scratch.lookup(&zero);
    if (ret < IN_HEADER_LEN || !v || bpf_probe_read_user(iov, sizeof(iov), (void *)r->iov) < 0 ||
        bpf_probe_read_user(&h, sizeof(h), (void *)iov[0].base) < 0 || h.opcode == OP_INTERRUPT) {
        reading.delete(&tid);
        return 0;
    }
    struct key_t key = {.unique = h.unique, .dev = r->dev};
    v->ts = bpf_ktime_get_ns();
    v->nodeid = h.nodeid;
    v->opcode = h.opcode;
    v->hpid = h.pid;
    v->tgid = 0;
    v->tid = 0;
    v->uid = h.uid;
    v->gid = h.gid;
    __builtin_memset(v->comm, 0, sizeof(v->comm));
    v->name[0] = 0;
    /* The name follows the operation's fixed part (none for LOOKUP, fuse_create_in and
     * fuse_mknod_in 16 bytes, fuse_mkdir_in 8). The client sizes iov[0] for a header and a
     * fuse_write_in (so a WRITE's data lands in iov[1]): a name starts in iov[0] and may go
     * on in iov[1]. */
    u32 skip = h.opcode == OP_CREATE || h.opcode == OP_MKNOD ? 16 : h.opcode == OP_MKDIR ? 8 : 0;
    if (h.opcode == OP_LOOKUP || h.opcode == OP_CREATE || h.opcode == OP_MKNOD || h.opcode == OP_MKDIR) {
        u64 off = IN_HEADER_LEN + skip;
        u64 first = iov[0].len > off ? iov[0].len - off : 0;
        if (first > FIRST_MAX)
            first = FIRST_MAX;
        long got = 0;
        if (first)
            got = bpf_probe_read_user_str(v->name, (first & FIRST_MAX) + 1, (void *)(iov[0].base + off));
        /* no NUL in iov[0]'s part (all of it read): the rest is in iov[1] */
        if (got == (long)first + 1 && iov[0].len - off <= FIRST_MAX) {
            u32 at = first & FIRST_MAX;
            bpf_probe_read_user_str(v->name + at, NAME_LEN - FIRST_MAX - 1, (void *)iov[1].base);
        }
    }
    inflight.update(&key, v);
    reading.delete(&tid);
    return 0;
}

/* A reply written: name the node a naming reply makes, and send what the rules keep. */
int writev_enter(struct pt_regs *ctx) {
    u32 *dev = fuse_fd(PT_REGS_PARM1(ctx));
    if (!dev)
        return 0;
    u64 now = bpf_ktime_get_ns();
    struct iov_t iov[2] = {};
    struct fuse_out_header_t oh = {};
    int cnt = (int)PT_REGS_PARM3(ctx);
    if (cnt < 1 || bpf_probe_read_user(iov, cnt >= 2 ? sizeof(iov) : sizeof(iov[0]),
                                       (void *)PT_REGS_PARM2(ctx)) < 0)
        return 0;
    if (bpf_probe_read_user(&oh, sizeof(oh), (void *)iov[0].base) < 0 || oh.unique == 0)
        return 0;                   /* unique 0: a notification, no request behind it */
    struct key_t key = {.unique = oh.unique, .dev = *dev};
    struct inflight_t *sent = inflight.lookup(&key);
    if (!sent)                      /* read before the probes started: its operation is unknown */
        return 0;
    u32 op = sent->opcode;
    s32 err = oh.error;
    u64 out_nodeid = 0;
    int naming = op == OP_LOOKUP || op == OP_CREATE || op == OP_MKDIR || op == OP_MKNOD;
    if (naming && err == 0) {       /* fuse_entry_out.nodeid: the payload's first member */
        u64 payload = cnt >= 2 ? iov[1].base : iov[0].base + sizeof(oh);
        bpf_probe_read_user(&out_nodeid, sizeof(out_nodeid), (void *)payload);
        if (out_nodeid && sent->name[0]) {
            int zero = 0;
            struct name_t *n = name_scratch.lookup(&zero);
            if (n) {
                n->parent = sent->nodeid;
                bpf_probe_read_kernel(n->name, sizeof(n->name), sent->name);
                names.update(&out_nodeid, n);
            }
        }
    }
    int slow = now - sent->ts >= SLOW_NS;
    int failed = err != 0 && !expected_error(op, err);
    if (!slow && !failed) {
        inflight.delete(&key);
        return 0;
    }
    int zero = 0;
    struct fuse_event_t *ev = scratch.lookup(&zero);
    if (!ev) {
        inflight.delete(&key);
        return 0;
    }
    ev->ts_send = sent->ts;
    ev->ts_end = now;
    ev->unique = oh.unique;
    ev->dev = key.dev;
    ev->nodeid = sent->nodeid;
    ev->out_nodeid = out_nodeid;
    ev->opcode = op;
    ev->error = err;
    ev->uid = sent->uid;
    ev->gid = sent->gid;
    ev->hpid = sent->hpid;
    ev->send_tgid = 0;
    ev->send_tid = 0;
    ev->end_tid = (u32)bpf_get_current_pid_tgid();
    ev->pending = 0;
    ev->sys_nr = NR_UNKNOWN;
    ev->in_syscall = 0;
    ev->sys_arg0 = 0;
    __builtin_memset(ev->comm, 0, sizeof(ev->comm));
    bpf_probe_read_kernel(ev->name, sizeof(ev->name), sent->name);
    inflight.delete(&key);
    events.perf_submit(ctx, ev, sizeof(*ev));
    return 0;
}
