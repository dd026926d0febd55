#!/usr/bin/env python3
"""Derives kiln-vmm's seccomp allow-lists from strace output (see README.md in this folder).

Input: a folder of `strace -f -ff -o DIR/t` files (one per thread). Each thread is classified by
the name it gives itself (prctl PR_SET_NAME: vcpuN, api) or as main (the thread that ran
execve). Only what a thread calls after its filter is installed counts: trace kiln-vmm with a filter
that allows everything (`permissive.json`), so that strace shows each thread's
seccomp(SECCOMP_SET_MODE_FILTER) call; runs that never installed one are left out.
Prints the JSON document seccompiler compiles (resources/seccomp/x86_64.json).
"""
import json, os, re, sys

CALL = re.compile(r'^(?:\d+\s+)?([a-z0-9_]+)\(')
NAME = re.compile(r'prctl\(PR_SET_NAME, "([^"]+)"')
# Reviewed additions, for paths the tests may not reach in every run:
# every thread: the SIGSYS handler's line and exit, signal returns, futexes, malloc's memory
# calls, and a thread's own end (its signal stack is unmapped, its descriptors closed).
ALWAYS = {"write", "exit", "exit_group", "rt_sigreturn", "futex", "sched_yield", "brk", "mmap",
          "mremap", "munmap", "mprotect", "madvise", "sigaltstack", "close"}
BY_KIND = {
    # PATCH /drives/{id} on the event loop: open the new image (O_NONBLOCK), check its type,
    # lock it, size it; virtio-blk's I/O, flush and discard; the watchdog and the vCPU kicks;
    # the API socket removed at exit.
    "main": {"openat", "statx", "fstat", "newfstatat", "fcntl", "flock", "lseek", "read",
             "readv", "preadv", "pwritev", "pread64", "pwrite64", "writev", "fdatasync",
             "fallocate", "epoll_wait", "epoll_ctl", "timerfd_settime", "tgkill", "getpid",
             "clock_nanosleep", "unlink"},
    "vcpu": {"ioctl", "read"},
    "api": {"accept4", "recvfrom", "sendto", "writev", "shutdown", "epoll_wait", "epoll_ctl",
            "fcntl", "eventfd2", "epoll_create1", "getrandom"},
}
NEVER = {"execve", "execveat", "fork", "vfork", "clone", "clone3", "ptrace"}

def kind_of(name):
    if name is None:
        return None
    if re.fullmatch(r"vcpu\d+", name):
        return "vcpu"
    if name == "api":
        return "api"
    return None  # helper threads that end before boot (vm-memory), and tokio's

def main(folder):
    seen = {"main": set(), "vcpu": set(), "api": set()}
    threads = {}
    for f in sorted(os.listdir(folder)):
        tid = f.rsplit(".", 1)[-1]
        lines = open(os.path.join(folder, f), errors="replace").read().splitlines()
        calls = [(CALL.match(l), l) for l in lines]
        threads[tid] = [(m.group(1), l) for m, l in calls if m]
    names = {}
    for tid, calls in threads.items():
        for i, (c, l) in enumerate(calls):
            m = NAME.search(l)
            if m:
                names[tid] = (m.group(1), i + 1)
                break
    for tid, calls in threads.items():
        if calls[:1] and calls[0][0] == "execve":
            kind = "main"
        else:
            kind = kind_of(names.get(tid, (None, 0))[0])
        installed = [i for i, (c, l) in enumerate(calls)
                     if c == "seccomp" and "SECCOMP_SET_MODE_FILTER" in l]
        if kind and installed:
            seen[kind].update(c for c, _ in calls[installed[0] + 1:])
    for k in seen:
        seen[k] |= ALWAYS | BY_KIND[k]
    doc = {}
    for k, calls in seen.items():
        bad = calls & NEVER
        if bad:
            sys.exit(f"{k}: {sorted(bad)} seen after the filter's install point")
        doc[k] = {
            "default_action": "trap",
            "filter_action": "allow",
            "filter": [{"syscall": c} for c in sorted(calls)],
        }
    print(json.dumps(doc, indent=2))

if __name__ == "__main__":
    main(sys.argv[1])
