"""The default seccomp profile of a container, as runtime-spec ``linux.seccomp`` data.

Same semantics as the default profile runc/podman users know (containers/common,
Docker): every system call not listed fails with ``EPERM``; the list allows what
ordinary programs use; calls that create namespaces, load code into the kernel, change
the clock, trace other processes and so on are allowed only when the process holds the
capability that guards them (it normally does not).  ``clone3`` fails with ``ENOSYS``
instead, so C libraries fall back to ``clone``, whose namespace flags can be checked.
Names unknown to the running kernel's libseccomp are skipped by the runtime.

Pure data and a function building the spec: no I/O.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

EPERM = 1
ENOSYS = 38

#: host machine -> the seccomp architectures a container may run (native first)
ARCHITECTURES: dict[str, tuple[str, ...]] = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "arm64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
    "armv7l": ("SCMP_ARCH_ARM",),
    "ppc64le": ("SCMP_ARCH_PPC64LE",),
    "s390x": ("SCMP_ARCH_S390X", "SCMP_ARCH_S390"),
    "riscv64": ("SCMP_ARCH_RISCV64",),
}

# one string, so the list reads like the tables it mirrors
_ALLOWED_TEXT = """
accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64
fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat
fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat fstat64
fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue futex_time64
futex_wait futex_waitv futex_wake futimesat getcpu getcwd getdents getdents64 getegid getegid32
geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp
getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday
getuid getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch
io_cancel ioctl io_destroy io_getevents io_pgetevents io_pgetevents_time64 ioprio_get
ioprio_set io_setup io_submit io_uring_enter io_uring_register io_uring_setup ipc kill
landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link
linkat listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise
map_shadow_stack membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock
mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive
mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv
msgsnd msync munlock munlockall munmap nanosleep newfstatat _newselect open openat openat2
pause pidfd_getfd pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect
poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6
pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom
recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr rename renameat renameat2
restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo
sched_getaffinity sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min
sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop
semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid
setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid
setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid setreuid32
setrlimit set_robust_list setsid setsockopt set_thread_area set_tid_address setuid setuid32
setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4 sigprocmask sigreturn
socket socketcall socketpair splice stat stat64 statfs statfs64 statx symlink symlinkat sync
sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete timer_getoverrun
timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit
umask uname unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid
waitpid write writev
"""
_ALLOWED = tuple(_ALLOWED_TEXT.split())

#: calls only for some architectures (the runtime ignores names its architectures lack)
_ALLOWED_BY_ARCH: dict[str, tuple[str, ...]] = {
    "SCMP_ARCH_X86_64": ("arch_prctl", "modify_ldt"),
    "SCMP_ARCH_X86": ("modify_ldt",),
    "SCMP_ARCH_AARCH64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2"),
    "SCMP_ARCH_ARM": (
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
    ),
    "SCMP_ARCH_S390X": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
}

#: calls allowed only to a process holding the capability that guards them
_BY_CAPABILITY: dict[str, tuple[str, ...]] = {
    "CAP_SYS_ADMIN": (
        "bpf",
        "clone",
        "clone3",
        "fanotify_init",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "name_to_handle_at",
        "open_tree",
        "perf_event_open",
        "quotactl",
        "quotactl_fd",
        "setdomainname",
        "sethostname",
        "setns",
        "syslog",
        "umount",
        "umount2",
        "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": (
        "kcmp",
        "pidfd_getfd",
        "process_madvise",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
    ),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": (
        "settimeofday",
        "stime",
        "clock_settime",
        "clock_settime64",
        "clock_adjtime",
        "clock_adjtime64",
    ),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
}

#: personality(2) values ordinary programs use: Linux, Linux32, UNAME26, their mix, query
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
#: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
_CLONE_NAMESPACE_FLAGS = 0x7E020000


def _allow(names: Iterable[str], **extra: Any) -> dict[str, Any]:
    return {"names": sorted(set(names)), "action": "SCMP_ACT_ALLOW", **extra}


def default_profile(capabilities: Iterable[str] = (), machine: str | None = None) -> dict[str, Any]:
    """``linux.seccomp`` for a process holding *capabilities* on *machine* (default: this host)."""
    caps = set(capabilities)
    arches = ARCHITECTURES.get(machine or platform.machine(), ())
    syscalls: list[dict[str, Any]] = [_allow(_ALLOWED)]
    per_arch = sorted({name for arch in arches for name in _ALLOWED_BY_ARCH.get(arch, ())})
    if per_arch:
        syscalls.append(_allow(per_arch))
    # the conditions of one rule must all hold: one rule per accepted value
    syscalls += [
        _allow(["personality"], args=[{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}])
        for value in _PERSONALITIES
    ]
    granted = {name for cap in sorted(caps) for name in _BY_CAPABILITY.get(cap, ())}
    if granted:
        syscalls.append(_allow(granted))
    if "CAP_SYS_ADMIN" not in caps:
        # s390x passes the flags in the second argument
        index = 1 if arches and arches[0] == "SCMP_ARCH_S390X" else 0
        syscalls.append(
            _allow(
                ["clone"],
                args=[
                    {
                        "index": index,
                        "value": _CLONE_NAMESPACE_FLAGS,
                        "valueTwo": 0,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            )
        )
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": EPERM}
    if arches:
        profile["architectures"] = list(arches)
    profile["syscalls"] = syscalls
    return profile
