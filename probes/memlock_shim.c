/* Lets stapbpf run where it may not raise RLIMIT_MEMLOCK (no CAP_SYS_RESOURCE, e.g. in a
 * container or this VM). stapbpf asks for an unlimited limit before it loads its maps; since
 * Linux 5.11 BPF memory is charged to the memory cgroup, not to RLIMIT_MEMLOCK, so a refused
 * raise is reported as success and the current limit stays. Every other call is untouched.
 * Built and preloaded by correlate/probe/stap_backend.py only when the raise is refused. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/resource.h>

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
    int (*real)(__rlimit_resource_t, const struct rlimit *) = dlsym(RTLD_NEXT, "setrlimit");
    int ret = real(resource, rlim);
    if (ret != 0 && resource == RLIMIT_MEMLOCK && errno == EPERM)
        return 0;
    return ret;
}

int setrlimit64(__rlimit_resource_t resource, const struct rlimit64 *rlim)
{
    int (*real)(__rlimit_resource_t, const struct rlimit64 *) = dlsym(RTLD_NEXT, "setrlimit64");
    int ret = real(resource, rlim);
    if (ret != 0 && resource == RLIMIT_MEMLOCK && errno == EPERM)
        return 0;
    return ret;
}
