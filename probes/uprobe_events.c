// Uprobe/uretprobe events for the correlate probe catalog (bcc).
//
// One fixed event record for every probe; the Python side (correlate/probe/bcc_backend.py)
// appends one small entry and one return function per ProbeSpec, built from the helpers
// below, and decodes the record with the same layout. Strings and structs are read with
// bounded bpf_probe_read_user*, so a bad pointer gives a flag, never a fault.
#include <uapi/linux/ptrace.h>
#include <linux/sched.h>

#define MAX_STR 256
#define KIND_CALL 0
#define KIND_RETURN 1

// flags: which parts of the record hold data
#define F_STR 1
#define F_STR_FAULT 2
#define F_STRUCT 4
#define F_STRUCT_FAULT 8
#define F_NO_ENTRY 16

struct event_t {
    u64 ts;             // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u64 duration_ns;    // returns: time since the matching entry on this thread
    s64 retval;
    u64 ints[2];        // int / ptr arguments, in spec order
    s64 words[11];      // struct argument, 8-byte words (timespecs are sec, nsec pairs)
    u32 pid;            // tgid
    u32 tid;
    u32 probe_id;
    u32 kind;
    u32 flags;
    u32 pad;
    char comm[TASK_COMM_LEN];
    char str[MAX_STR];
};

BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(scratch, struct event_t, 1);
BPF_HASH(entry_ts, u64, u64, 10240);   // (tid << 32 | probe_id) -> entry time

static __always_inline struct event_t *begin(u32 probe_id, u32 kind) {
    int zero = 0;
    struct event_t *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    ev->ts = bpf_ktime_get_ns();
    ev->duration_ns = 0;
    ev->retval = 0;
    ev->ints[0] = 0;
    ev->ints[1] = 0;
    #pragma unroll
    for (int i = 0; i < 11; i++)
        ev->words[i] = 0;
    ev->pid = id >> 32;
    ev->tid = (u32)id;
    ev->probe_id = probe_id;
    ev->kind = kind;
    ev->flags = 0;
    ev->str[0] = 0;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    return ev;
}

static __always_inline void read_str(struct event_t *ev, const void *p) {
    if (!p)
        return;
    if (bpf_probe_read_user_str(ev->str, sizeof(ev->str), p) > 0)
        ev->flags |= F_STR;
    else
        ev->flags |= F_STR_FAULT;
}

// One pointer hop: *(p + off), or 0 when p is 0 or unreadable.
static __always_inline const void *deref(const void *p, long off) {
    const void *out = 0;
    if (!p || bpf_probe_read_user(&out, sizeof(out), (const char *)p + off) != 0)
        return 0;
    return out;
}

// Read `nwords` 8-byte words at `p + off` into words[at..].
static __always_inline int read_words(struct event_t *ev, const void *p, int off, int at, int nwords) {
    if (at < 0 || at + nwords > 11)
        return -1;
    if (bpf_probe_read_user(&ev->words[at], nwords * 8, (const char *)p + off) != 0)
        return -1;
    return 0;
}

// struct timespec times[2]: atime, mtime -> words[0..3]
static __always_inline void read_timespec2(struct event_t *ev, const void *p) {
    if (!p)
        return;
    ev->flags |= read_words(ev, p, 0, 0, 4) == 0 ? F_STRUCT : F_STRUCT_FAULT;
}

// struct smb_file_time { mtime, atime, ctime, create_time } -> words[0..7]
static __always_inline void read_smb_file_time(struct event_t *ev, const void *p) {
    if (!p)
        return;
    ev->flags |= read_words(ev, p, 0, 0, 8) == 0 ? F_STRUCT : F_STRUCT_FAULT;
}

// struct glfs_stat: mask @0 -> words[0], atime @0x18 -> words[1..2], mtime @0x48 -> words[3..4]
static __always_inline void read_glfs_stat(struct event_t *ev, const void *p) {
    if (!p)
        return;
    int bad = read_words(ev, p, 0, 0, 1);
    bad |= read_words(ev, p, 0x18, 1, 2);
    bad |= read_words(ev, p, 0x48, 3, 2);
    ev->flags |= bad == 0 ? F_STRUCT : F_STRUCT_FAULT;
}

static __always_inline void remember_entry(struct event_t *ev) {
    u64 key = ((u64)ev->tid << 32) | ev->probe_id;
    u64 ts = ev->ts;
    entry_ts.update(&key, &ts);
}

static __always_inline int finish_return(struct pt_regs *ctx, u32 probe_id) {
    struct event_t *ev = begin(probe_id, KIND_RETURN);
    if (!ev)
        return 0;
    ev->retval = PT_REGS_RC(ctx);
    u64 key = ((u64)ev->tid << 32) | probe_id;
    u64 *start = entry_ts.lookup(&key);
    if (start) {
        ev->duration_ns = ev->ts - *start;
        entry_ts.delete(&key);
    } else {
        ev->flags |= F_NO_ENTRY;   // attached while the call was already running
    }
    events.perf_submit(ctx, ev, sizeof(*ev));
    return 0;
}

// ---- per-probe functions generated from the catalog follow ----
