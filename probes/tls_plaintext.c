// Plaintext of TLS connections, from OpenSSL's SSL_read / SSL_write (and the _ex forms).
//
// Loaded by correlate/probe/tls_collector.py. The entry keeps the buffer pointer per thread;
// the return copies the bytes that moved (a read's result is only there after it; a write's
// buffer is unchanged until it returns) with the entry time for writes, so a call written is
// always stamped before the reply read. At most MAX_COPY bytes per call are copied; the
// record says how many moved. The socket of an SSL* comes from SSL_set_fd, or, for a
// connection set up before the probes, from the read/write system call the thread makes
// inside the SSL_* call. THREAD_FILTER (from the loader) limits copying to the processes of
// threads whose name starts with a prefix: Gluster names its threads glfs_*.
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#define MAX_COPY 16384          // a power of two: the verifier needs the bound as a mask
#define DIR_READ 0
#define DIR_WRITE 1
#define KIND_DATA 0
#define KIND_SETFD 1

struct tls_event_t {
    u64 ts;
    u64 ssl;
    u32 pid;
    u32 tid;
    s32 fd;             // -1 when not known yet
    u32 kind;           // KIND_DATA / KIND_SETFD
    u32 dir;
    u32 len;            // bytes the call moved
    u32 copied;         // bytes of them in data[]
    u32 lost_before;    // bytes of this SSL* and direction whose records the ring refused
    char comm[TASK_COMM_LEN];
    u8 data[MAX_COPY];
};

struct active_t {
    u64 ssl;
    u64 buf;
    u64 ex_len;         // _ex forms: where the byte count is written (size_t *), else 0
    u64 ts;
    u32 dir;
    u32 pad;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(scratch, struct tls_event_t, 1);
BPF_HASH(active, u32, struct active_t, 4096);          // tid -> SSL_* call in progress
BPF_TABLE("lru_hash", u64, s32, ssl_fd, 65536);        // SSL* -> socket fd
BPF_ARRAY(drops, u64, 1);                              // records the ring buffer refused
struct stream_t {
    u64 ssl;
    u32 pid;
    u32 dir;
};
// Bytes refused per stream, told in its next record: the reader turns them into a gap the
// RPC framer resynchronises after, instead of splicing the bytes around the hole.
BPF_TABLE("lru_hash", struct stream_t, u64, lost_bytes, 4096);
BPF_TABLE("lru_hash", u32, u8, followed, 4096);        // processes whose TLS is copied

// A process is followed once one of its threads named THREAD_FILTER* enters libssl (the
// handshake runs in Gluster's epoll threads, before any data): from then on every thread of
// it, since Gluster also writes from the thread that makes a call (a gfapi caller's).
static __always_inline int wanted_thread(void) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
#ifdef PID_FILTER
    return tgid == PID_FILTER;
#endif
#ifdef THREAD_FILTER
    if (followed.lookup(&tgid))
        return 1;
    char comm[TASK_COMM_LEN] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    char want[] = THREAD_FILTER;
#pragma unroll
    for (int i = 0; i < sizeof(want) - 1; i++)
        if (comm[i] != want[i])
            return 0;
    u8 one = 1;
    followed.update(&tgid, &one);
#endif
    return 1;
}

int handshake_enter(struct pt_regs *ctx) {
    wanted_thread();
    return 0;
}

// The reader drains on its own clock; a wakeup per record preempted the probed process
// (one more runnable task per SSL call on a busy host). Every WAKE_EVERY-th record on a CPU
// wakes it, so a burst cannot fill the ring unseen.
#define WAKE_EVERY 256
BPF_PERCPU_ARRAY(since_wakeup, u32, 1);

static __always_inline u64 wakeup_flag(void) {
    u32 zero = 0;
    u32 *n = since_wakeup.lookup(&zero);
    if (!n)
        return 0;
    if (++*n < WAKE_EVERY)
        return BPF_RB_NO_WAKEUP;
    *n = 0;
    return BPF_RB_FORCE_WAKEUP;
}

static __always_inline int enter(struct pt_regs *ctx, u32 dir, u64 ex_len) {
    if (!wanted_thread())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct active_t a = {};
    a.ssl = PT_REGS_PARM1(ctx);
    a.buf = PT_REGS_PARM2(ctx);
    a.ex_len = ex_len;
    a.ts = bpf_ktime_get_ns();
    a.dir = dir;
    active.update(&tid, &a);
    return 0;
}

static __always_inline int leave(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct active_t *a = active.lookup(&tid);
    if (!a)
        return 0;
    s64 ret = PT_REGS_RC(ctx);
    u64 moved = 0;
    if (a->ex_len) {
        if (ret == 1)
            bpf_probe_read_user(&moved, sizeof(moved), (void *)a->ex_len);
    } else if ((int)ret > 0) {
        moved = (u32)ret;
    }
    if (moved == 0) {
        active.delete(&tid);
        return 0;
    }
    u32 zero = 0;
    struct tls_event_t *e = scratch.lookup(&zero);
    if (!e) {
        active.delete(&tid);
        return 0;
    }
    e->ts = a->dir == DIR_WRITE ? a->ts : bpf_ktime_get_ns();
    e->ssl = a->ssl;
    e->pid = id >> 32;
    e->tid = tid;
    e->kind = KIND_DATA;
    e->dir = a->dir;
    e->len = moved > 0xffffffff ? 0xffffffff : moved;
    s32 *fd = ssl_fd.lookup(&a->ssl);
    e->fd = fd ? *fd : -1;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    u32 n = moved > MAX_COPY ? MAX_COPY : moved;
    n &= (MAX_COPY - 1) | MAX_COPY;
    if (n > MAX_COPY)
        n = MAX_COPY;
    if (bpf_probe_read_user(e->data, n, (void *)a->buf) != 0)
        n = 0;
    e->copied = n;
    struct stream_t key = {.ssl = a->ssl, .pid = e->pid, .dir = a->dir};
    u64 *before = lost_bytes.lookup(&key);
    e->lost_before = before ? (*before > 0xffffffff ? 0xffffffff : *before) : 0;
    u64 size = offsetof(struct tls_event_t, data) + n;
    if (size > sizeof(*e))
        size = sizeof(*e);
    if (events.ringbuf_output(e, size, wakeup_flag()) != 0) {
        u64 *d = drops.lookup(&zero);
        if (d)
            __sync_fetch_and_add(d, 1);
        u64 lost = (before ? *before : 0) + moved;
        lost_bytes.update(&key, &lost);
    } else if (before) {
        lost_bytes.delete(&key);
    }
    active.delete(&tid);
    return 0;
}

int read_enter(struct pt_regs *ctx) { return enter(ctx, DIR_READ, 0); }
int write_enter(struct pt_regs *ctx) { return enter(ctx, DIR_WRITE, 0); }
int read_ex_enter(struct pt_regs *ctx) { return enter(ctx, DIR_READ, PT_REGS_PARM4(ctx)); }
int write_ex_enter(struct pt_regs *ctx) { return enter(ctx, DIR_WRITE, PT_REGS_PARM4(ctx)); }
int any_return(struct pt_regs *ctx) { return leave(ctx); }

// SSL_set_fd(ssl, fd): the binding, and a record so the collector drops what it resolved
// for an earlier socket with the same number.
int set_fd_enter(struct pt_regs *ctx) {
    u64 ssl = PT_REGS_PARM1(ctx);
    s32 fd = PT_REGS_PARM2(ctx);
    ssl_fd.update(&ssl, &fd);
    u32 zero = 0;
    struct tls_event_t *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    e->ts = bpf_ktime_get_ns();
    e->ssl = ssl;
    e->pid = id >> 32;
    e->tid = id;
    e->fd = fd;
    e->kind = KIND_SETFD;
    e->dir = 0;
    e->len = e->copied = e->lost_before = 0;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    events.ringbuf_output(e, offsetof(struct tls_event_t, data), wakeup_flag());
    return 0;
}

// The socket behind an SSL* whose SSL_set_fd the probes did not see: the first read or
// write system call its thread makes inside SSL_read/SSL_write (OpenSSL's socket BIO).
#ifndef NO_SYSCALL_ROUTE
TRACEPOINT_PROBE(raw_syscalls, sys_enter) {
    long nr = args->id;
    if (nr != 0 && nr != 1 && nr != 19 && nr != 20 && nr != 44 && nr != 45 && nr != 46
            && nr != 47)    // read write readv writev sendto recvfrom sendmsg recvmsg
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct active_t *a = active.lookup(&tid);
    if (!a)
        return 0;
    u64 ssl = a->ssl;
    if (ssl_fd.lookup(&ssl))
        return 0;
    s32 fd = args->args[0];
    ssl_fd.update(&ssl, &fd);
    return 0;
}
#endif
