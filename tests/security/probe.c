/* A tiny static probe run inside test containers (the busybox rootfs has no Python). Also built for the
 * 32-bit ABI of the host (gcc -m32 on x86_64), so that the same calls go through the compat syscall table.
 * probe sys NAME...        one line per NAME: "NAME OK", "NAME E<errno name>", or "NAME ABSENT" when the
 *                          call does not exist in the ABI the probe was built for
 * probe tiocsti FD TEXT    push TEXT into the terminal on FD, report like sys
 * probe abstract NAME      connect to the abstract unix socket "\0NAME"
 * probe kill PID SIG       kill(2)
 * probe setuid-exec UID PATH ARGS...   setuid(UID) then execv(PATH) (no_new_privs test)
 * probe euid               print the effective uid
 * probe x32 | i386         make an x32 / i386 syscall (getpid)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <stddef.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef __NR_open_tree_attr
#define __NR_open_tree_attr 467
#endif
#ifndef __NR_mount_setattr
#define __NR_mount_setattr 442
#endif

static const char *ename(int e) {
    switch (e) {
    case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case ESRCH: return "ESRCH";
    case EBADF: return "EBADF"; case EFAULT: return "EFAULT"; case EINVAL: return "EINVAL";
    case ENOSYS: return "ENOSYS"; case EACCES: return "EACCES"; case ENOTTY: return "ENOTTY";
    case EIO: return "EIO"; case ENOKEY: return "ENOKEY"; case ECONNREFUSED: return "ECONNREFUSED";
    case EOPNOTSUPP: return "EOPNOTSUPP"; case ENODEV: return "ENODEV"; case EBUSY: return "EBUSY";
    case ENOTDIR: return "ENOTDIR"; case ENOMEM: return "ENOMEM"; case E2BIG: return "E2BIG";
    case EROFS: return "EROFS"; case ENOEXEC: return "ENOEXEC";
    default: { static char buf[32]; snprintf(buf, sizeof buf, "E%d", e); return buf; }
    }
}

static void report(const char *name, long r) {
    if (r == -1) printf("%s %s\n", name, ename(errno)); else printf("%s OK\n", name);
    fflush(stdout);
}

/* A fresh pty from the container's devpts, made our controlling terminal (we run in a forked child after
 * setsid), so that the kernel itself would allow TIOCSTI: only the seccomp filter stands in the way. */
static int pty_slave(void) {
    int m = open("/dev/ptmx", O_RDWR | O_NOCTTY);
    if (m < 0) return -1;
    unlockpt(m);
    setsid();
    int s = open(ptsname(m), O_RDWR);
    if (s >= 0) ioctl(s, TIOCSCTTY, 0);
    return s;
}

static long ptrace_child(void) {
    pid_t p = fork();
    if (p == 0) { pause(); _exit(0); }
    long r = syscall(SYS_ptrace, 0x4206 /* PTRACE_SEIZE */, p, 0, 0);
    int e = errno;
    kill(p, SIGKILL);
    waitpid(p, 0, 0);
    errno = e;
    return r;
}

static long do_clone(unsigned long flags) {
    long r = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (r == 0) _exit(0);
    if (r > 0) waitpid(r, 0, 0);
    return r;
}

#define ABSENT (-3)

static long one(const char *n) {
    char c = 'x';
    if (!strcmp(n, "keyctl")) return syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -3 /* session */, 1);
    if (!strcmp(n, "add_key")) return syscall(SYS_add_key, "user", "pirun-probe", "x", 1, -2);
    if (!strcmp(n, "request_key")) return syscall(SYS_request_key, "user", "pirun-no-such-key", NULL, 0);
    if (!strcmp(n, "userfaultfd")) return syscall(SYS_userfaultfd, 1 /* UFFD_USER_MODE_ONLY */ | O_CLOEXEC);
    if (!strcmp(n, "perf_event_open")) return syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0);
    if (!strcmp(n, "kexec_load")) return syscall(SYS_kexec_load, 0, 0, NULL, 0);
#ifdef SYS_kexec_file_load
    if (!strcmp(n, "kexec_file_load")) return syscall(SYS_kexec_file_load, -1, -1, 0, NULL, 0);
#else
    if (!strcmp(n, "kexec_file_load")) return ABSENT;
#endif
    if (!strcmp(n, "open_by_handle_at")) return syscall(SYS_open_by_handle_at, -1, NULL, 0);
    if (!strcmp(n, "bpf")) return syscall(SYS_bpf, 0 /* MAP_CREATE */, NULL, 0);
    if (!strcmp(n, "fsopen")) return syscall(SYS_fsopen, "tmpfs", 0);
    if (!strcmp(n, "fsconfig")) return syscall(SYS_fsconfig, -1, 0, NULL, NULL, 0);
    if (!strcmp(n, "fsmount")) return syscall(SYS_fsmount, -1, 0, 0);
    if (!strcmp(n, "fspick")) return syscall(SYS_fspick, -1, "", 0xffff);
    if (!strcmp(n, "move_mount")) return syscall(SYS_move_mount, -1, "", -1, "", 0xffffffff);
    if (!strcmp(n, "open_tree")) return syscall(SYS_open_tree, -1, "", 0xffffffff);
    if (!strcmp(n, "open_tree_attr")) return syscall(__NR_open_tree_attr, -1, "", 0xffffffff, NULL, 0);
    if (!strcmp(n, "mount_setattr")) return syscall(__NR_mount_setattr, -1, "", 0xffffffff, NULL, 0);
    if (!strcmp(n, "mount")) return syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL);
    if (!strcmp(n, "umount2")) return syscall(SYS_umount2, "/proc", 0);
    if (!strcmp(n, "pivot_root")) return syscall(SYS_pivot_root, "/tmp", "/tmp");
    if (!strcmp(n, "setns")) return syscall(SYS_setns, -1, 0);
    if (!strcmp(n, "unshare_user")) return syscall(SYS_unshare, CLONE_NEWUSER);
    if (!strcmp(n, "unshare_ns")) return syscall(SYS_unshare, CLONE_NEWNS);
    if (!strcmp(n, "unshare_fs")) return syscall(SYS_unshare, CLONE_FS);
    if (!strcmp(n, "clone_user")) return do_clone(CLONE_NEWUSER);
#if __SIZEOF_LONG__ == 8
    if (!strcmp(n, "clone_user_hibits")) return do_clone(CLONE_NEWUSER | 0x100000000UL);
#else
    if (!strcmp(n, "clone_user_hibits")) return ABSENT;     /* no high bits in a 32-bit register */
#endif
    if (!strcmp(n, "clone_fork")) return do_clone(0);
    if (!strcmp(n, "clone3")) return syscall(SYS_clone3, NULL, 0);
    if (!strcmp(n, "fork")) { pid_t p = fork(); if (p == 0) _exit(0); if (p > 0) waitpid(p, 0, 0); return p; }
    if (!strcmp(n, "ptrace_child")) return ptrace_child();
    if (!strcmp(n, "personality_query")) return syscall(SYS_personality, 0xffffffff);
    if (!strcmp(n, "personality_norandom")) return syscall(SYS_personality, 0x0040000);
    if (!strcmp(n, "io_uring_setup")) return syscall(SYS_io_uring_setup, 0, NULL);
    if (!strcmp(n, "swapon")) return syscall(SYS_swapon, "/nonexistent", 0);
    if (!strcmp(n, "syslog")) return syscall(SYS_syslog, 10 /* SIZE_BUFFER */, NULL, 0);
    if (!strcmp(n, "acct")) return syscall(SYS_acct, NULL);
    if (!strcmp(n, "reboot")) return syscall(SYS_reboot, 0, 0, 0, NULL);
    if (!strcmp(n, "clock_settime")) { struct timespec t = {0, 0}; return syscall(SYS_clock_settime, 99, &t); }
    if (!strcmp(n, "init_module")) return syscall(SYS_init_module, NULL, 0, "");
    if (!strcmp(n, "finit_module")) return syscall(SYS_finit_module, -1, "", 0);
    if (!strcmp(n, "getpid")) return syscall(SYS_getpid);
    /* the 32-bit ABIs' own ways to unmount and to set the clock */
#ifdef SYS_umount
    if (!strcmp(n, "umount_old")) return syscall(SYS_umount, "/proc");
#else
    if (!strcmp(n, "umount_old")) return ABSENT;
#endif
#ifdef SYS_stime
    if (!strcmp(n, "stime")) { long t = 0; return syscall(SYS_stime, &t); }
#else
    if (!strcmp(n, "stime")) return ABSENT;
#endif
#ifdef SYS_clock_settime64
    if (!strcmp(n, "clock_settime64")) { long long t[2] = {0, 0}; return syscall(SYS_clock_settime64, 99, t); }
    if (!strcmp(n, "clock_adjtime64")) return syscall(SYS_clock_adjtime64, 99, NULL);
#else
    if (!strcmp(n, "clock_settime64") || !strcmp(n, "clock_adjtime64")) return ABSENT;
#endif
    if (!strcmp(n, "unknown_nr")) return syscall(1000);
    if (!strcmp(n, "tiocsti")) { int s = pty_slave(); return s < 0 ? -2 : ioctl(s, TIOCSTI, &c); }
#if __SIZEOF_LONG__ == 8
    if (!strcmp(n, "tiocsti_hibits")) { int s = pty_slave(); return s < 0 ? -2 : syscall(SYS_ioctl, s, 0x100000000UL | TIOCSTI, &c); }
#else
    if (!strcmp(n, "tiocsti_hibits")) return ABSENT;
#endif
    if (!strcmp(n, "tioclinux")) { int s = pty_slave(); char sub = 6; return s < 0 ? -2 : ioctl(s, TIOCLINUX, &sub); }
    if (!strcmp(n, "tiocgwinsz")) { int s = pty_slave(); struct winsize w; return s < 0 ? -2 : ioctl(s, TIOCGWINSZ, &w); }
    fprintf(stderr, "probe: unknown syscall test %s\n", n);
    exit(2);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) return 2;
    if (!strcmp(argv[1], "sys")) {
        /* each test in its own child: unshare and setsid in one must not change the next */
        for (int i = 2; i < argc; i++) {
            pid_t p = fork();
            if (p == 0) {
                errno = 0;
                long r = one(argv[i]);
                if (r == -2) printf("%s SETUP-FAILED %s\n", argv[i], ename(errno));
                else if (r == ABSENT) printf("%s ABSENT\n", argv[i]);
                else report(argv[i], r);
                _exit(0);
            }
            int st;
            waitpid(p, &st, 0);
            if (!WIFEXITED(st) || WEXITSTATUS(st)) printf("%s CRASHED %d\n", argv[i], st);
        }
        return 0;
    }
    if (!strcmp(argv[1], "tiocsti") && argc == 4) {
        int fd = atoi(argv[2]);
        long r = 0;
        for (const char *p = argv[3]; *p && r == 0; p++) r = ioctl(fd, TIOCSTI, p);
        report("tiocsti", r);
        return 0;
    }
    if (!strcmp(argv[1], "abstract") && argc == 3) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        size_t n = strlen(argv[2]);
        memcpy(a.sun_path + 1, argv[2], n);
        long r = connect(s, (struct sockaddr *)&a, offsetof(struct sockaddr_un, sun_path) + 1 + n);
        report("abstract", r);
        return 0;
    }
    if (!strcmp(argv[1], "kill") && argc == 4) { report("kill", kill(atoi(argv[2]), atoi(argv[3]))); return 0; }
    if (!strcmp(argv[1], "euid")) { printf("euid %d\n", (int)geteuid()); return 0; }
    if (!strcmp(argv[1], "setuid-exec") && argc >= 4) {
        if (setgid(atoi(argv[2])) || setuid(atoi(argv[2]))) { perror("setuid"); return 3; }
        execv(argv[3], argv + 3);
        perror("execv");
        return 4;
    }
#ifdef __x86_64__
    if (!strcmp(argv[1], "x32")) { report("x32", syscall(0x40000000 | SYS_getpid)); return 0; }
    if (!strcmp(argv[1], "i386")) {
        long r;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(20) : "memory");   /* i386 getpid */
        printf("i386 returned %ld\n", r);
        return 0;
    }
#endif
    return 2;
}
