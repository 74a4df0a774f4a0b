/* The application's own system calls on a FUSE mount: what it called, on which path or fd,
 * and the errno it got, for the calls whose FUSE requests the fuse group reports.
 *
 * Prepended to fuse_events.c, whose send/end programs call note_send/note_end. Raw
 * tracepoints sys_enter/sys_exit (every system call of the machine passes them), so the
 * first thing each does is leave: sys_enter keeps a call only for a watched process (one
 * that had the mount open when the probes started, or has since sent a FUSE request from
 * its own thread) and only for the file system calls the collector lists in `sysinfo`;
 * sys_exit finds nothing for every other call. A call leaves the kernel only when one of
 * its FUSE requests was reported (failed or slow) or it sent FUSE requests and took SLOW_NS
 * or more. Register offsets (pt_regs) come from the running kernel's BTF.
 *
 * SYSCALLS 0 leaves only the hooks' stubs (the group without system calls).
 */
#define PATH_LEN 256
#define WATCH_WORDS 65536
#define SYS_TRACKED 0x80        /* sysinfo: a call kept at sys_enter */
#define SYS_FD0 0x10            /* sysinfo: its first argument is an fd */
#define SYS_PATH_MASK 0x07      /* sysinfo: 1 + the index of its path argument, 0: none */

struct sysc_t {
    u64 ts;             /* sys_enter, or the first FUSE send for a call entered unwatched */
    u64 arg0;
    u64 arg1;
    u64 unique;         /* the reported FUSE request, else the first one sent */
    u32 nr;             /* NR_UNKNOWN: entered before its process was watched */
    u32 fused;          /* FUSE requests the call sent */
    u32 reported;       /* 1: a request of it left the kernel */
    u32 opcode;
    u32 dev;
    s32 fuse_error;
};

struct sys_event_t {
    u64 ts_enter;
    u64 ts_exit;
    s64 ret;
    u64 unique;
    u64 fd;             /* argument 0: the fd, or an *at call's dirfd */
    u32 nr;
    u32 partial;        /* 1: entered before its process was watched (no arguments) */
    u32 tgid;
    u32 tid;
    u32 fused;
    u32 opcode;
    u32 dev;
    s32 fuse_error;
    u32 has_fd;
    u32 pad;
    char comm[16];
    char path[PATH_LEN];
};

#if SYSCALLS
BPF_TABLE("lru_hash", u32, struct sysc_t, sysc, 16384);
/* one bit per process id up to PID_MAX_LIMIT (4,194,304 on 64-bit): an array lookup the
 * verifier inlines, the only work sys_enter/sys_exit do for a process not watched */
BPF_ARRAY(watched, u64, WATCH_WORDS);
BPF_ARRAY(sysinfo, u8, 512);
BPF_PERCPU_ARRAY(sys_scratch, struct sys_event_t, 1);
BPF_PERF_OUTPUT(sysevents);

static __always_inline int is_watched(u32 tgid) {
    u32 idx = tgid >> 6;
    u64 *w = watched.lookup(&idx);
    return w && ((*w >> (tgid & 63)) & 1);
}

/* A FUSE request sent from its requester's own thread: inside a system call of it. */
static __always_inline void note_send(u32 tgid, u32 tid, u64 unique, u32 op, u32 dev, u64 now) {
    if (FILTER_PID && tgid != FILTER_PID)
        return;
    u32 idx = tgid >> 6;
    u64 *w = watched.lookup(&idx);
    if (w && !((*w >> (tgid & 63)) & 1))
        __sync_fetch_and_or(w, 1ULL << (tgid & 63));
    struct sysc_t *s = sysc.lookup(&tid);
    if (!s) {   /* entered before the process was watched: its number is read at exit */
        struct sysc_t fresh = {.ts = now, .nr = NR_UNKNOWN};
        sysc.update(&tid, &fresh);
        s = sysc.lookup(&tid);
        if (!s)
            return;
    }
    s->fused++;
    if (!s->unique) {
        s->unique = unique;
        s->opcode = op;
        s->dev = dev;
    }
}

/* A reported request (failed or slow): its system call leaves the kernel too. Returns the
 * call's number for the fuse.reply event: NR_UNKNOWN when no call is traced, NR_UNKNOWN - 1
 * when one is (its fuse.syscall follows) but entered unwatched. */
static __always_inline u32 note_end(u32 tid, u64 unique, u32 op, u32 dev, s32 err) {
    struct sysc_t *s = sysc.lookup(&tid);
    if (!s)
        return NR_UNKNOWN;
    if (!s->reported || (err && !s->fuse_error)) {   /* the first failure wins */
        s->reported = 1;
        s->unique = unique;
        s->opcode = op;
        s->dev = dev;
        s->fuse_error = err;
    }
    return s->nr == NR_UNKNOWN ? NR_UNKNOWN - 1 : s->nr;
}

RAW_TRACEPOINT_PROBE(sys_enter) {
    u64 id = bpf_get_current_pid_tgid();
    if (!is_watched(id >> 32))
        return 0;
    int nr = (int)ctx->args[1];
    if (nr < 0 || nr >= 512)
        return 0;
    u8 *info = sysinfo.lookup(&nr);
    if (!info || !(*info & SYS_TRACKED))
        return 0;
    const void *regs = (const void *)ctx->args[0];
    struct sysc_t s = {.ts = bpf_ktime_get_ns(), .nr = nr};
    s.arg0 = rd64(regs + REGS_ARG0);
    s.arg1 = rd64(regs + REGS_ARG1);
    u32 tid = (u32)id;
    sysc.update(&tid, &s);
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_exit) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!is_watched(pid_tgid >> 32))
        return 0;
    u32 tid = (u32)pid_tgid;
    struct sysc_t *s = sysc.lookup(&tid);
    if (!s)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (!s->reported && !(s->fused && now - s->ts >= SLOW_NS)) {
        sysc.delete(&tid);
        return 0;
    }
    int zero = 0;
    struct sys_event_t *ev = sys_scratch.lookup(&zero);
    if (!ev) {
        sysc.delete(&tid);
        return 0;
    }
    u32 nr = s->nr;
    ev->partial = nr == NR_UNKNOWN;
    if (ev->partial)
        nr = (u32)rd64((const void *)ctx->args[0] + REGS_NR);
    ev->nr = nr;
    ev->ts_enter = s->ts;
    ev->ts_exit = now;
    ev->ret = (s64)ctx->args[1];
    ev->unique = s->unique;
    ev->fused = s->fused;
    ev->opcode = s->opcode;
    ev->dev = s->dev;
    ev->fuse_error = s->fuse_error;
    u64 id = bpf_get_current_pid_tgid();
    ev->tgid = id >> 32;
    ev->tid = (u32)id;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    ev->path[0] = 0;
    u32 idx = nr & 511;
    u8 *info = sysinfo.lookup(&idx);
    u8 flags = info ? *info : 0;
    ev->has_fd = !ev->partial && (flags & SYS_FD0);
    ev->fd = ev->partial ? 0 : s->arg0;     /* the fd, or the dirfd of the *at calls */
    u32 which = flags & SYS_PATH_MASK;
    if (!ev->partial && which) {   /* the caller's path, still in its memory at exit */
        const char *p = (const char *)(which == 1 ? s->arg0 : s->arg1);
        if (p)
            bpf_probe_read_user_str(ev->path, sizeof(ev->path), p);
    }
    sysc.delete(&tid);
    sysevents.perf_submit(ctx, ev, sizeof(*ev));
    return 0;
}
#else
static __always_inline void note_send(u32 tgid, u32 tid, u64 unique, u32 op, u32 dev, u64 now) {}
static __always_inline u32 note_end(u32 tid, u64 unique, u32 op, u32 dev, s32 err) {
    return NR_UNKNOWN;
}
#endif
