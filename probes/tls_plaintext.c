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
#define KIND_HANDSHAKE 2    // a failed SSL_connect/SSL_accept: data[] holds a struct hs_t
#define ERR_LIB_SSL 20

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

// A handshake in progress on a thread (Gluster calls SSL_connect/SSL_accept again and again
// on a non-blocking socket until it completes), and the first OpenSSL error raised in it:
// ERR_new, ERR_set_debug(file, line, func), ERR_set_error(lib, reason, fmt, ...) or
// ERR_vset_error in that order (OpenSSL 3's ERR_raise and SSLfatal), and the certificate check's X509_V_ERR_* as libssl reads it
// with X509_STORE_CTX_get_error.
struct hs_t {
    u32 lib;            // ERR_LIB_*; 0: no error raised in this call
    u32 reason;
    s32 verify;         // X509_V_ERR_*, 0 when the certificate check passed or did not run
    s32 ret;
    u16 family;         // the peer: from the socket itself, else what connect() named (0: none)
    u16 port;
    u8 addr[16];
    char func[48];      // the OpenSSL function that raised it
    u16 local_family;   // this end, from the socket (0: not read)
    u16 local_port;     // network order, as port
    u8 local_addr[16];
};

struct hs_active_t {
    u64 ssl;
    u32 accept;
    u32 pad;
    struct hs_t hs;
};

BPF_HASH(handshakes, u32, struct hs_active_t, 1024);   // tid -> handshake call in progress
struct peer_t {
    u16 family;
    u16 port;
    u8 addr[16];
};
BPF_TABLE("lru_hash", u64, struct peer_t, peers, 4096);   // pid << 32 | fd -> connect()'s peer

// Both ends of the socket behind fd, read from the kernel's own structures at offsets from
// the running kernel's BTF (SOCK_OFFSETS, from the loader): a server's failed SSL_accept
// names its client, and no /proc race (Gluster closes the socket right after). The file is
// taken for a socket only when the socket's back pointer names it.
#ifdef SOCK_OFFSETS
static __always_inline void socket_ends(s32 fd, struct hs_t *hs) {
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    void *files = 0, *fdt = 0, *fds = 0, *file = 0, *sock = 0, *back = 0, *sk = 0;
    u32 max_fds = 0;
    if (fd < 0 || bpf_probe_read_kernel(&files, sizeof(files), (void *)task + OFF_TASK_FILES)
            || !files || bpf_probe_read_kernel(&fdt, sizeof(fdt), files + OFF_FILES_FDT) || !fdt
            || bpf_probe_read_kernel(&max_fds, sizeof(max_fds), fdt + OFF_FDT_MAX_FDS)
            || (u32)fd >= max_fds
            || bpf_probe_read_kernel(&fds, sizeof(fds), fdt + OFF_FDT_FD) || !fds
            || bpf_probe_read_kernel(&file, sizeof(file), fds + (u64)(u32)fd * 8) || !file
            || bpf_probe_read_kernel(&sock, sizeof(sock), file + OFF_FILE_PRIVATE) || !sock
            || bpf_probe_read_kernel(&back, sizeof(back), sock + OFF_SOCKET_FILE) || back != file
            || bpf_probe_read_kernel(&sk, sizeof(sk), sock + OFF_SOCKET_SK) || !sk)
        return;
    u16 family = 0, num = 0;
    bpf_probe_read_kernel(&family, sizeof(family), sk + OFF_SKC_FAMILY);
    if (family == 2) {
        bpf_probe_read_kernel(hs->addr, 4, sk + OFF_SKC_DADDR);
        bpf_probe_read_kernel(hs->local_addr, 4, sk + OFF_SKC_RCV_SADDR);
    } else if (family == 10) {
        bpf_probe_read_kernel(hs->addr, 16, sk + OFF_SKC_V6_DADDR);
        bpf_probe_read_kernel(hs->local_addr, 16, sk + OFF_SKC_V6_RCV_SADDR);
    } else {
        return;
    }
    bpf_probe_read_kernel(&hs->port, 2, sk + OFF_SKC_DPORT);
    bpf_probe_read_kernel(&num, 2, sk + OFF_SKC_NUM);         // host order
    hs->local_port = (num >> 8) | (num << 8);
    hs->family = hs->local_family = family;
}
#endif

static __always_inline int hs_enter(struct pt_regs *ctx, u32 accept) {
    if (!wanted_thread())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct hs_active_t a = {};
    a.ssl = PT_REGS_PARM1(ctx);
    a.accept = accept;
    handshakes.update(&tid, &a);
    return 0;
}

int connect_enter(struct pt_regs *ctx) { return hs_enter(ctx, 0); }
int accept_enter(struct pt_regs *ctx) { return hs_enter(ctx, 1); }

int err_debug(struct pt_regs *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    struct hs_active_t *a = handshakes.lookup(&tid);
    if (a && a->hs.lib != ERR_LIB_SSL)
        bpf_probe_read_user_str(a->hs.func, sizeof(a->hs.func), (void *)PT_REGS_PARM3(ctx));
    return 0;
}

int err_set(struct pt_regs *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    struct hs_active_t *a = handshakes.lookup(&tid);
    // The first error of libssl's own is the cause (later ones are consequences); before
    // one, the latest of any library (libcrypto raises and pops errors while it tries
    // decoders: "unsupported algorithm" from pkey_set_type on every handshake)
    if (a && a->hs.lib != ERR_LIB_SSL) {
        a->hs.lib = PT_REGS_PARM1(ctx);
        a->hs.reason = PT_REGS_PARM2(ctx);
    }
    return 0;
}

int verify_result(struct pt_regs *ctx) {
    u32 tid = bpf_get_current_pid_tgid();
    struct hs_active_t *a = handshakes.lookup(&tid);
    if (a)
        a->hs.verify = PT_REGS_RC(ctx);
    return 0;
}

// At the return: a failure is sent when the call raised an error of libssl's or returned 0
// (the peer closed); -1 without one is "call again" (SSL_ERROR_WANT_READ/WRITE) on a
// non-blocking socket, whatever libcrypto raised and popped on the way.
int hs_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct hs_active_t *a = handshakes.lookup(&tid);
    if (!a)
        return 0;
    int ret = PT_REGS_RC(ctx);
    if (ret == 1 || (ret < 0 && a->hs.lib != ERR_LIB_SSL)) {
        handshakes.delete(&tid);
        return 0;
    }
    u32 zero = 0;
    struct tls_event_t *e = scratch.lookup(&zero);
    if (!e) {
        handshakes.delete(&tid);
        return 0;
    }
    e->ts = bpf_ktime_get_ns();
    e->ssl = a->ssl;
    e->pid = id >> 32;
    e->tid = tid;
    s32 *fd = ssl_fd.lookup(&a->ssl);
    e->fd = fd ? *fd : -1;
    e->kind = KIND_HANDSHAKE;
    e->dir = a->accept;
    e->len = e->lost_before = 0;
    e->copied = sizeof(struct hs_t);
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    a->hs.ret = ret;
#ifdef SOCK_OFFSETS
    if (fd)
        socket_ends(*fd, &a->hs);
#endif
    if (fd && !a->hs.family) {
        u64 key = (id & 0xffffffff00000000ULL) | (u32)*fd;
        struct peer_t *p = peers.lookup(&key);
        if (p) {
            a->hs.family = p->family;
            a->hs.port = p->port;
            __builtin_memcpy(a->hs.addr, p->addr, sizeof(a->hs.addr));
        }
    }
    bpf_probe_read_kernel(e->data, sizeof(struct hs_t), &a->hs);
    events.ringbuf_output(e, offsetof(struct tls_event_t, data) + sizeof(struct hs_t),
                          BPF_RB_FORCE_WAKEUP);
    handshakes.delete(&tid);
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
// A raw tracepoint: it needs no tracefs (a plain one's argument struct is built from
// tracefs's format file) and reads the call's registers at the offsets BTF gave.
#ifndef NO_SYSCALL_ROUTE
static __always_inline u64 regs_arg(const void *regs, int offset) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), regs + offset);
    return v;
}

RAW_TRACEPOINT_PROBE(sys_enter) {
    long nr = (long)ctx->args[1];
    const void *regs = (const void *)ctx->args[0];
    u64 arg0 = regs_arg(regs, REGS_ARG0);
    if (nr == 42) {     // connect(fd, addr, len): the peer a failed handshake names
        // any process: Gluster connects from the caller's thread, before a glfs_* thread
        // has entered libssl (an AF_UNIX connect costs a two-byte read and nothing more)
#ifdef PID_FILTER
        if ((bpf_get_current_pid_tgid() >> 32) != PID_FILTER)
            return 0;
#endif
        struct peer_t p = {};
        u16 family = 0;
        void *sa = (void *)regs_arg(regs, REGS_ARG1);
        bpf_probe_read_user(&family, sizeof(family), sa);
        if (family == 2) {              // AF_INET: port, then the address at +4
            bpf_probe_read_user(&p.port, 2, sa + 2);
            bpf_probe_read_user(p.addr, 4, sa + 4);
        } else if (family == 10) {      // AF_INET6: port, flowinfo, address at +8
            bpf_probe_read_user(&p.port, 2, sa + 2);
            bpf_probe_read_user(p.addr, 16, sa + 8);
        } else {
            return 0;
        }
        p.family = family;
        u64 key = (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | (u32)arg0;
        peers.update(&key, &p);
        return 0;
    }
    if (nr != 0 && nr != 1 && nr != 19 && nr != 20 && nr != 44 && nr != 45 && nr != 46
            && nr != 47)    // read write readv writev sendto recvfrom sendmsg recvmsg
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct active_t *a = active.lookup(&tid);
    u64 ssl;
    if (a) {
        ssl = a->ssl;
    } else {    // a handshake's own reads and writes (Gluster sets the socket BIO itself)
        struct hs_active_t *h = handshakes.lookup(&tid);
        if (!h)
            return 0;
        ssl = h->ssl;
    }
    if (ssl_fd.lookup(&ssl))
        return 0;
    s32 fd = arg0;
    ssl_fd.update(&ssl, &fd);
    return 0;
}
#endif
