/* FUSE requests as the kernel sends them to the file system daemon and gets them back.
 *
 * Raw tracepoints fuse_request_send and fuse_request_end (Linux 6.12+); both pass the
 * struct fuse_req *. The member offsets below come from the running kernel's BTF
 * (correlate/probe/fuse_backend.py defines them), not from the headers bcc compiles with.
 *
 * Only what a diagnosis needs leaves the kernel: a request that failed (except the answers
 * that mean "not there" in the normal course, see expected_error) or that took SLOW_NS or
 * more. Successful LOOKUP/CREATE/MKDIR/MKNOD replies name their node in the `names` map
 * (node id -> parent node id + name), which the collector reads for the few requests it
 * sends.
 *
 * The application's system calls (fuse_syscalls.c) are spliced in after the helpers.
 */
#include <uapi/linux/ptrace.h>

#define NAME_LEN 128
#define NR_UNKNOWN 0xffffffff    /* no system call known */
#define OP_LOOKUP 1
#define OP_GETATTR 3
#define OP_MKNOD 8
#define OP_MKDIR 9
#define OP_GETXATTR 22
#define OP_LISTXATTR 23
#define OP_INTERRUPT 36
#define OP_CREATE 35
#define OP_REMOVEXATTR 24

struct inflight_t {
    u64 ts;
    u64 nodeid;
    u32 opcode;
    u32 hpid;
    u32 tgid;           /* the sending thread: the requester for a synchronous request */
    u32 tid;
    char comm[16];
    u32 sys_nr;         /* the system call it is sent from (NR_UNKNOWN: none, or not asked) */
    u32 pad;
    u64 sys_arg0;       /* that call's first argument (an fd, or an *at call's dirfd) */
};

#include "fuse_records.h"

BPF_HASH(inflight, struct key_t, struct inflight_t, 16384);
BPF_TABLE("lru_hash", u64, struct name_t, names, 32768);
BPF_PERCPU_ARRAY(scratch, struct fuse_event_t, 1);
BPF_PERCPU_ARRAY(name_scratch, struct name_t, 1);
BPF_PERF_OUTPUT(events);

static __always_inline u64 rd64(const void *p) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), p);
    return v;
}

static __always_inline u32 rd32(const void *p) {
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), p);
    return v;
}

static __always_inline u32 req_dev(const void *req) {
    const void *fm = (const void *)rd64(req + REQ_FM);
    const void *fc = fm ? (const void *)rd64(fm + FM_FC) : 0;
    return fc ? rd32(fc + FC_DEV) : 0;
}

/* fuse_syscalls.c */

/* The name a naming request carries: LOOKUP's first non-empty input (newer kernels put an
 * empty argument first), the second input of CREATE/MKDIR/MKNOD (after their fixed part). */
static __always_inline int read_name(const void *args, u32 op, char *dst) {
    int idx = 1;
    if (op == OP_LOOKUP && rd32(args + ARGS_IN + IN_ARG_SIZE) > 0)
        idx = 0;
    const void *arg = args + ARGS_IN + idx * IN_ARG_LEN;
    u32 size = rd32(arg + IN_ARG_SIZE);
    const void *value = (const void *)rd64(arg + IN_ARG_VALUE);
    if (!value || size == 0)
        return -1;
    /* LOOKUP's name is a slice of the caller's path, not NUL-terminated: read `size` bytes */
    u32 n = size < NAME_LEN - 1 ? size : NAME_LEN - 1;
    n &= NAME_LEN - 1;
    if (n == 0 || bpf_probe_read_kernel(dst, n, value) < 0)
        return -1;
    dst[n] = 0;
    return n;
}

RAW_TRACEPOINT_PROBE(fuse_request_send) {
    const void *req = (const void *)ctx->args[0];
    struct key_t key = {.unique = rd64(req + REQ_IN_H + H_UNIQUE), .dev = req_dev(req)};
    struct inflight_t v = {.ts = bpf_ktime_get_ns()};
    u64 id = bpf_get_current_pid_tgid();
    v.tgid = id >> 32;
    v.tid = (u32)id;
    v.nodeid = rd64(req + REQ_IN_H + H_NODEID);
    v.opcode = rd32(req + REQ_IN_H + H_OPCODE);
    v.hpid = rd32(req + REQ_IN_H + H_PID);
    bpf_get_current_comm(&v.comm, sizeof(v.comm));
    v.sys_nr = NR_UNKNOWN;
#if SYS_SEND
    /* synchronous: the requester's own system call, from its saved user registers (orig_ax
     * is -1 outside a system call: a page fault's request) */
    if (v.hpid == v.tid) {
        const void *regs = (const void *)bpf_task_pt_regs(
            (struct task_struct *)bpf_get_current_task_btf());
        v.sys_nr = (u32)rd64(regs + REGS_NR);
        v.sys_arg0 = rd64(regs + REGS_ARG0);
    }
#endif
    inflight.update(&key, &v);
    if (v.hpid == v.tid)     /* synchronous: sent inside the requester's system call */
        note_send(v.tgid, v.tid, key.unique, v.opcode, key.dev, v.ts);
    return 0;
}

RAW_TRACEPOINT_PROBE(fuse_request_end) {
    const void *req = (const void *)ctx->args[0];
    u64 now = bpf_ktime_get_ns();
    struct key_t key = {.unique = rd64(req + REQ_IN_H + H_UNIQUE), .dev = req_dev(req)};
    struct inflight_t *sent = inflight.lookup(&key);
    u64 ts_send = sent ? sent->ts : 0;
    u32 op = rd32(req + REQ_IN_H + H_OPCODE);
    s32 err = (s32)rd32(req + REQ_OUT_H + OH_ERROR);
    u64 nodeid = rd64(req + REQ_IN_H + H_NODEID);
    const void *args = (const void *)rd64(req + REQ_ARGS);

    u64 out_nodeid = 0;
    int naming = op == OP_LOOKUP || op == OP_CREATE || op == OP_MKDIR || op == OP_MKNOD;
    if (naming && err == 0 && args) {
        const void *out = (const void *)rd64(args + ARGS_OUT + ARG_VALUE);
        out_nodeid = out ? rd64(out) : 0;   /* fuse_entry_out.nodeid, its first member */
        int zero = 0;
        struct name_t *n = name_scratch.lookup(&zero);
        if (n && out_nodeid) {
            n->parent = nodeid;
            if (read_name(args, op, n->name) > 0)
                names.update(&out_nodeid, n);
        }
    }
    int slow = ts_send && now - ts_send >= SLOW_NS;
    int failed = err != 0 && !expected_error(op, err);
    if (!slow && !failed) {
        if (sent)
            inflight.delete(&key);
        return 0;
    }
    int zero = 0;
    struct fuse_event_t *ev = scratch.lookup(&zero);
    if (!ev) {
        if (sent)
            inflight.delete(&key);
        return 0;
    }
    ev->ts_send = ts_send;
    ev->ts_end = now;
    ev->unique = key.unique;
    ev->dev = key.dev;
    ev->nodeid = nodeid;
    ev->out_nodeid = out_nodeid;
    ev->opcode = op;
    ev->error = err;
    ev->uid = rd32(req + REQ_IN_H + H_UID);
    ev->gid = rd32(req + REQ_IN_H + H_GID);
    ev->hpid = rd32(req + REQ_IN_H + H_PID);
    ev->end_tid = (u32)bpf_get_current_pid_tgid();
    ev->pending = 0;
    ev->send_tgid = sent ? sent->tgid : 0;
    ev->send_tid = sent ? sent->tid : 0;
    ev->sys_nr = sent ? sent->sys_nr : NR_UNKNOWN;
    ev->sys_arg0 = sent ? sent->sys_arg0 : 0;
    ev->in_syscall = sent && sent->tid == sent->hpid &&
        note_end(sent->tid, key.unique, op, key.dev, failed ? err : 0) != NR_UNKNOWN;
    __builtin_memset(ev->comm, 0, sizeof(ev->comm));
    if (sent)
        bpf_probe_read_kernel(ev->comm, sizeof(ev->comm), sent->comm);
    ev->name[0] = 0;
    if (naming && args)
        read_name(args, op, ev->name);
    if (sent)
        inflight.delete(&key);
    events.perf_submit(ctx, ev, sizeof(*ev));
    return 0;
}
