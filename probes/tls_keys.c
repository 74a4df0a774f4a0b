// `--probe tls-keys`: the secrets of each TLS connection a Gluster process sets up, read from
// its SSL object when SSL_connect, SSL_accept or SSL_do_handshake returns 1 (done). One
// trap per handshake call, none per read or write: the capture carries the bytes and is
// decrypted with these keys. The offsets (OFF_*) are the library's own, measured by
// correlate/probe/tls_layout.py. THREAD_FILTER limits it to processes whose handshake runs
// in a thread named so (Gluster's glfs_* threads): no other program's keys are read.
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#define SECRET_LEN 48

struct key_event_t {
    u32 pid;
    u32 tid;
    u64 ssl;
    u8 client_random[32];
    u8 client_secret[SECRET_LEN];
    u8 server_secret[SECRET_LEN];
    u8 master_key[SECRET_LEN];
    char comm[TASK_COMM_LEN];
};

BPF_HASH(inflight, u32, u64, 4096);             // thread -> the SSL* of its handshake call
BPF_PERCPU_ARRAY(scratch, struct key_event_t, 1);
BPF_PERF_OUTPUT(keys);

static __always_inline int wanted(void) {
#ifdef PID_FILTER
    if ((bpf_get_current_pid_tgid() >> 32) != PID_FILTER)
        return 0;
#endif
#ifdef THREAD_FILTER
    char comm[TASK_COMM_LEN] = {};
    bpf_get_current_comm(&comm, sizeof(comm));
    char want[] = THREAD_FILTER;
#pragma unroll
    for (int i = 0; i < sizeof(want) - 1; i++)
        if (comm[i] != want[i])
            return 0;
#endif
    return 1;
}

int handshake_enter(struct pt_regs *ctx) {
    if (!wanted())
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    u64 ssl = PT_REGS_PARM1(ctx);
    inflight.update(&tid, &ssl);
    return 0;
}

int handshake_return(struct pt_regs *ctx) {
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    u64 *found = inflight.lookup(&tid);
    if (!found)
        return 0;
    u64 ssl = *found;
    inflight.delete(&tid);
    if ((int)PT_REGS_RC(ctx) != 1)
        return 0;
    u32 zero = 0;
    struct key_event_t *e = scratch.lookup(&zero);
    if (!e)
        return 0;
    e->pid = id >> 32;
    e->tid = tid;
    e->ssl = ssl;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    bpf_probe_read_user(e->client_random, 32, (void *)(ssl + OFF_CLIENT_RANDOM));
    bpf_probe_read_user(e->client_secret, SECRET_LEN, (void *)(ssl + OFF_CLIENT_SECRET));
    bpf_probe_read_user(e->server_secret, SECRET_LEN, (void *)(ssl + OFF_SERVER_SECRET));
    u64 session = 0;
    bpf_probe_read_user(&session, sizeof(session), (void *)(ssl + OFF_SESSION));
    __builtin_memset(e->master_key, 0, SECRET_LEN);
    if (session)
        bpf_probe_read_user(e->master_key, SECRET_LEN, (void *)(session + OFF_MASTER_KEY));
    keys.perf_submit(ctx, e, sizeof(*e));
    return 0;
}
