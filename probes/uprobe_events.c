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
#define F_ERRNO 32
#define F_TALLY 64
#define F_FD_PATH 128
#define FD_OPENED_UNSEEN 1  // the fd was opened before the probes were attached

struct event_t {
    u64 ts;             // bpf_ktime_get_ns(): CLOCK_MONOTONIC
    u64 duration_ns;    // returns: time since the matching entry on this thread
    s64 retval;
    u64 base;           // calls: load address of the probed library in this process
    u64 ints[4];        // int / long / ptr / fd arguments, in spec order
    s64 words[11];      // struct argument, 8-byte words (timespecs are sec, nsec pairs);
                        // on fsync/close returns, the fd's unsynced-write tally (F_TALLY)
    u32 pid;            // tgid
    u32 tid;
    u32 probe_id;
    u32 kind;
    u32 flags;
    s32 err;            // returns: errno as the caller sees it (F_ERRNO)
    u32 caller;         // 1 + the id of the wrapper probe this call came from (wrappers.py)
    u32 pad;
    char comm[TASK_COMM_LEN];
    char str[MAX_STR];
};

// What the probes know about one open glfs_fd_t of one process: the path it was opened
// with and the writes glfs acknowledged since the last successful fsync.
struct fd_key_t {
    u32 pid;
    u32 pad;
    u64 fd;
};
struct fd_info_t {
    u64 open_ts;
    u64 writes;         // acknowledged (returned >= 0) since the last successful fsync
    u64 bytes;
    u64 first_ts;
    u64 last_ts;
    s64 lo;             // lowest offset written, -1 when the call had no offset
    s64 hi;             // end of the highest write
    u32 flags;
    u32 pad;
    char path[MAX_STR];
};

// What a call keeps until its return: the entry time (duration_ns), the library's load
// address (errno) and the arguments, as register values. A probe that sends only failed
// calls builds the call's record from this at the return, reading strings and structs
// through the saved pointers then (the caller's memory outlives the call). Small on purpose:
// every call of every probed function writes one, and copying a whole event_t (450 bytes)
// there cost more than the rest of the program.
struct entry_t {
    u64 ts;
    u64 base;
    u64 ints[4];        // int / long / ptr / fd arguments, in spec order
    u64 str_ptr;        // the str argument's pointer
    u64 struct_ptr;     // the struct argument's pointer
    u32 caller;         // the call record's caller
    u32 pid;            // KEEP_IN_HASH: the process, for the collector's list of running calls
};

// --pid: every probe is attached to the library (all processes) and returns at once in any
// other process. A uprobe attached per process is a per-task perf event, and the kernel then
// switches the process's perf events at every one of its context switches: on this VM that
// slowed a gfapi client by ~20% even for probes it never hit (bench/probe_overhead.py
// --pid-filter). Filtering here costs the other processes a trap per probed call instead.
#ifdef FILTER_TGID
#define PID_GUARD() if ((bpf_get_current_pid_tgid() >> 32) != FILTER_TGID) return 0
#else
#define PID_GUARD() do { } while (0)
#endif

BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(scratch, struct event_t, 1);
BPF_PERCPU_ARRAY(fd_scratch, struct fd_info_t, 1);
BPF_TABLE("lru_hash", struct fd_key_t, struct fd_info_t, fds, 8192);

static __always_inline struct event_t *begin(u32 probe_id, u32 kind) {
    int zero = 0;
    struct event_t *ev = scratch.lookup(&zero);
    if (!ev)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    ev->ts = bpf_ktime_get_ns();
    ev->duration_ns = 0;
    ev->retval = 0;
    ev->base = 0;
    #pragma unroll
    for (int i = 0; i < 4; i++)
        ev->ints[i] = 0;
    ev->err = 0;
    ev->caller = 0;
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

// read_timespec2, read_smb_file_time, read_glfs_stat: generated (catalog.STRUCT_WORDS)

// An argument the probed function copied to its stack before the point the program runs at
// (correlate/probe/trap_sites.py): the word at %rsp + off, 0 when unreadable.
static __always_inline u64 stack_word(struct pt_regs *ctx, long off) {
    u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (const char *)PT_REGS_SP(ctx) + off);
    return v;
}

static __always_inline u64 entry_key(u32 probe_id) {
    return ((u64)(u32)bpf_get_current_pid_tgid() << 32) | probe_id;
}

// Where a call's entry_t waits for its return. By default in the calling thread's task
// storage: one slot per probe (PROBES, defined by the collector), found without hashing or
// locks, freed with the thread; a slot whose ts is 0 is empty. A kernel that does not give
// uprobe programs task storage gets KEEP_IN_HASH: an LRU hash keyed by (tid, probe), which
// costs a probed call about 0.7 us more (bench/probe_overhead.py).
#ifdef KEEP_IN_HASH
BPF_TABLE("lru_hash", u64, struct entry_t, entries, 4096);

static __always_inline void keep_entry(u32 probe_id, struct entry_t *e) {
    u64 key = entry_key(probe_id);
    e->pid = bpf_get_current_pid_tgid() >> 32;
    entries.update(&key, e);
}

static __always_inline struct entry_t *kept_entry(u32 probe_id) {
    u64 key = entry_key(probe_id);
    return entries.lookup(&key);
}

static __always_inline void forget_entry(u32 probe_id, struct entry_t *e) {
    u64 key = entry_key(probe_id);
    entries.delete(&key);
}
#else
struct kept_t {
    struct entry_t call[PROBES];
};
BPF_TASK_STORAGE(kept, struct kept_t);

static __always_inline struct entry_t *entry_slot(u32 probe_id, u64 flags) {
    struct kept_t *k = kept.task_storage_get(bpf_get_current_task_btf(), 0, flags);
    if (!k || probe_id >= PROBES)
        return 0;
    return &k->call[probe_id];
}

static __always_inline void keep_entry(u32 probe_id, struct entry_t *e) {
    struct entry_t *slot = entry_slot(probe_id, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (slot)
        __builtin_memcpy(slot, e, sizeof(*e));
}

static __always_inline struct entry_t *kept_entry(u32 probe_id) {
    struct entry_t *slot = entry_slot(probe_id, 0);
    return slot && slot->ts ? slot : 0;
}

static __always_inline void forget_entry(u32 probe_id, struct entry_t *e) {
    if (e)
        e->ts = 0;
}

#ifdef SLOW_PROBES
// emit="slow" probes send a call that has run slow_ns already while it still runs
// (bcc_backend.py): the collector reads this task iterator, which lists those calls from
// every thread's task storage; its strings and structs are read from the process then
// (proc_memory.py). Listing them here, and not from a hash the calls would also be kept in,
// spares every call of those hot functions a hash update and delete. The iterator's context,
// declared here for want of the kernel's headers (struct bpf_iter__task):
struct seq_file;
struct bpf_iter_meta {
    struct seq_file *seq;
    u64 session_id;
    u64 seq_num;
};
struct bpf_iter__task {
    struct bpf_iter_meta *meta;
    struct task_struct *task;
};
struct running_t {
    u32 tid;
    u32 pid;
    u32 probe_id;
    u32 pad;
    struct entry_t call;
};

// probe i's call in progress, when it has run slow_ns already: one record to the reader.
// The thread may be writing the slot meanwhile; a slot being written holds a new call,
// whose ts (the first word) is too recent to be listed.
static __always_inline void list_running(struct seq_file *seq, struct running_t *r, struct kept_t *k,
                                         u32 i, u64 slow_ns, u64 now) {
    if (i >= PROBES || !k->call[i].ts || now - k->call[i].ts < slow_ns)
        return;
    r->probe_id = i;
    __builtin_memcpy(&r->call, &k->call[i], sizeof(r->call));
    bpf_seq_write(seq, r, sizeof(*r));
}

BPF_ITER(task) {
    struct task_struct *task = ctx->task;
    if (!task)
        return 0;
    struct kept_t *k = kept.task_storage_get(task, 0, 0);
    if (!k)
        return 0;
    struct running_t r = {};
    // TASK_PID_OFF, TASK_TGID_OFF: task_struct's pid and tgid, from the kernel's BTF
    bpf_probe_read_kernel(&r.tid, sizeof(r.tid), (char *)task + TASK_PID_OFF);
    bpf_probe_read_kernel(&r.pid, sizeof(r.pid), (char *)task + TASK_TGID_OFF);
    u64 now = bpf_ktime_get_ns();
    SLOW_PROBES(ctx->meta->seq, &r, k, now)
    return 0;
}
#endif
#endif

// The call's record, built at its return from what the entry kept.
static __always_inline struct event_t *call_record(u32 probe_id, struct entry_t *entry) {
    struct event_t *ev = begin(probe_id, KIND_CALL);
    if (!ev)
        return 0;
    ev->ts = entry->ts;
    ev->base = entry->base;
    ev->caller = entry->caller;
    #pragma unroll
    for (int i = 0; i < 4; i++)
        ev->ints[i] = entry->ints[i];
    return ev;
}

// errno is thread-local in glibc: the caller's errno lives at fsbase + TPOFF, where TPOFF
// is the value glibc's __errno_location loads from its GOT. The probed library imports
// __errno_location: its GOT slot holds the function's address in this process; the code
// there is checked against the libc file's bytes before TPOFF is read next to it.
// ERRNO_* and FSBASE_OFF are defined by the collector (correlate/probe/errno_tls.py).
#ifdef FSBASE_OFF
static __always_inline void read_errno(struct event_t *ev, u64 base, u64 got_slot) {
    u64 fn = 0, code = 0, fsbase = 0;
    s64 tpoff = 0;
    s32 err = 0;
    if (!base || bpf_probe_read_user(&fn, sizeof(fn), (void *)(base + got_slot)) != 0)
        return;
    if (bpf_probe_read_user(&code, sizeof(code), (void *)fn) != 0 || code != ERRNO_FN_CODE)
        return;
    if (bpf_probe_read_user(&tpoff, sizeof(tpoff), (void *)(fn - ERRNO_FN_VADDR + ERRNO_TPOFF_VADDR)) != 0)
        return;
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    if (bpf_probe_read_kernel(&fsbase, sizeof(fsbase), (char *)task + FSBASE_OFF) != 0 || !fsbase)
        return;
    if (bpf_probe_read_user(&err, sizeof(err), (void *)(fsbase + tpoff)) != 0)
        return;
    ev->err = err;
    ev->flags |= F_ERRNO;
}
#endif

static __always_inline struct fd_info_t *fd_blank(void) {
    int zero = 0;
    struct fd_info_t *fi = fd_scratch.lookup(&zero);
    if (!fi)
        return 0;
    fi->open_ts = 0;
    fi->writes = 0;
    fi->bytes = 0;
    fi->first_ts = 0;
    fi->last_ts = 0;
    fi->lo = -1;
    fi->hi = -1;
    fi->flags = 0;
    fi->path[0] = 0;
    return fi;
}

// An fd argument: the path it was opened with, when the open was seen.
static __always_inline void fd_path(struct event_t *ev, u64 fd) {
    struct fd_key_t key = {.pid = ev->pid, .fd = fd};
    struct fd_info_t *fi = fds.lookup(&key);
    if (fi && fi->path[0]) {
        bpf_probe_read_kernel_str(ev->str, sizeof(ev->str), fi->path);
        ev->flags |= F_STR | F_FD_PATH;
    }
}

// glfs_open / glfs_creat returned the fd `fd` for the path the call was given.
static __always_inline void fd_opened(u32 pid, struct entry_t *entry, u64 fd) {
    struct fd_info_t *fi = fd_blank();
    if (!fi)
        return;
    fi->open_ts = entry->ts;
    if (bpf_probe_read_user_str(fi->path, sizeof(fi->path), (const void *)entry->str_ptr) <= 0)
        fi->path[0] = 0;
    struct fd_key_t key = {.pid = pid, .fd = fd};
    fds.update(&key, fi);
}

// A write glfs acknowledged: add it to the fd's unsynced tally.
static __always_inline void fd_wrote(u32 pid, u64 fd, s64 n, s64 off, u64 ts) {
    struct fd_key_t key = {.pid = pid, .fd = fd};
    struct fd_info_t *fi = fds.lookup(&key);
    if (!fi) {
        struct fd_info_t *blank = fd_blank();
        if (!blank)
            return;
        blank->flags = FD_OPENED_UNSEEN;
        fds.update(&key, blank);
        fi = fds.lookup(&key);
        if (!fi)
            return;
    }
    if (fi->writes == 0) {
        fi->first_ts = ts;
        fi->lo = off;
        fi->hi = off >= 0 ? off + n : -1;
    } else if (off >= 0) {
        if (fi->lo < 0 || off < fi->lo)
            fi->lo = off;
        if (off + n > fi->hi)
            fi->hi = off + n;
    }
    fi->last_ts = ts;
    __sync_fetch_and_add(&fi->writes, 1);
    __sync_fetch_and_add(&fi->bytes, n);
}

// fsync or close returned: report the tally on the return record (when one is sent); a
// successful fsync makes the writes durable, a close forgets the fd.
static __always_inline void fd_synced(struct event_t *ev, u32 pid, u64 fd, int failed, int closing) {
    struct fd_key_t key = {.pid = pid, .fd = fd};
    struct fd_info_t *fi = fds.lookup(&key);
    if (!fi)
        return;
    if (ev) {
        ev->words[0] = fi->writes;
        ev->words[1] = fi->bytes;
        ev->words[2] = fi->first_ts;
        ev->words[3] = fi->last_ts;
        ev->words[4] = fi->lo;
        ev->words[5] = fi->hi;
        ev->words[6] = fi->open_ts;
        ev->words[7] = fi->flags;
        ev->flags |= F_TALLY;
    }
    if (closing) {
        fds.delete(&key);
    } else if (!failed) {
        fi->writes = 0;
        fi->bytes = 0;
        fi->first_ts = 0;
        fi->lo = -1;
        fi->hi = -1;
    }
}

// ---- per-probe functions generated from the catalog follow ----
