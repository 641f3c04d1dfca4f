"""The default seccomp filter: a classic BPF program built in pure Python, installed by init.py after the
capabilities are dropped and no_new_privs is set (`--security-opt seccomp=unconfined` turns it off).

In the spirit of podman's default profile (containers-common seccomp.json), but written as a deny list, so that
the program stays small (~80 instructions, built in well under a millisecond at import time) and every syscall
whose verdict does not depend on its arguments is served from the kernel's seccomp action cache:

* the architecture is checked first: anything but the native ABI (x86_64 or aarch64) kills the process, and on
  x86_64 so does an x32 syscall (nr with bit 30 set). 32-bit binaries (i386, armhf) therefore do not run
  under the default filter: use seccomp=unconfined for them (podman allows them; we have no 32-bit tables).
* syscall numbers above the newest one this table knows (file_setattr, 469) return ENOSYS, as podman's
  allow-list does for syscalls it does not know: libc falls back, and a syscall added to the kernel later is
  not reachable until it is reviewed here.
* EPERM for: the kernel keyring (keyctl, add_key, request_key), userfaultfd, bpf, perf_event_open, kexec_*,
  modules, open_by_handle_at, swap, acct, reboot, syslog, setting the clock, quotactl, io_uring,
  lookup_dcookie, nfsservctl, uselib, _sysctl, ustat, sysfs, iopl/ioperm, vhangup, personality values other
  than podman's allowed ones; ioctl TIOCSTI and TIOCLINUX (compared on the low 32 bits of the argument, which
  is all the kernel reads: setting the high bits does not get around it).
* Without CAP_SYS_ADMIN in the container's bounding set (the default), like podman: EPERM for mount, umount2,
  pivot_root, setns, the new mount API (fsopen, fsconfig, fsmount, fspick, move_mount, open_tree,
  open_tree_attr, mount_setattr), and for unshare/clone with any namespace flag (a nested user namespace would
  hand back a full capability set); clone3 returns ENOSYS so that libc falls back to clone, whose flags can be
  inspected. unshare/clone without namespace flags (threads, fork, CLONE_FS...) stay allowed.
  With --cap-add SYS_ADMIN those are allowed, as in podman; likewise bpf with BPF, perf_event_open with
  PERFMON, syslog with SYSLOG, clock setting with SYS_TIME, reboot with SYS_BOOT, acct with SYS_PACCT.
* ptrace and process_vm_readv/writev are allowed, as podman does on kernels >= 4.8 (seccomp cannot be
  bypassed through ptrace any more; the PID namespace limits the tracees to the container).
"""
import os
import struct

from runtime.errors import SetupError

# <linux/audit.h>
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# <linux/seccomp.h>
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23

# <linux/filter.h>
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGT_K = 0x25
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]  (little endian)
_OFF_NR, _OFF_ARCH = 0, 4


def _arg_lo(i):
    return 16 + 8 * i


EPERM, ENOSYS = 1, 38
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
# CLONE_NEWTIME | NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
NS_FLAGS = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
# podman allows personality(2) only with these: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, query.
PERSONALITY_OK = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
LAST_KNOWN_NR = 469                     # file_setattr (Linux 6.17); numbers >= 424 are the same everywhere

# <linux/capability.h>
CAP_SYS_MODULE, CAP_SYS_BOOT, CAP_SYS_PACCT, CAP_SYS_ADMIN, CAP_SYS_TIME = 16, 22, 20, 21, 25
CAP_SYSLOG, CAP_PERFMON, CAP_BPF = 34, 38, 39

# <asm/unistd.h>: x86_64 (arch/x86/entry/syscalls/syscall_64.tbl) and aarch64 (asm-generic/unistd.h).
SYSCALLS = {
    "x86_64": {
        "ioctl": 16, "clone": 56, "clone3": 435, "unshare": 272, "personality": 135,
        "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "keyctl": 250, "add_key": 248,
        "request_key": 249, "userfaultfd": 323, "perf_event_open": 298, "kexec_load": 246,
        "kexec_file_load": 320, "open_by_handle_at": 304, "bpf": 321, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "move_mount": 429, "open_tree": 428, "mount_setattr": 442,
        "open_tree_attr": 467, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "create_module": 174, "query_module": 178, "get_kernel_syms": 177, "acct": 163, "reboot": 169,
        "swapon": 167, "swapoff": 168, "syslog": 103, "settimeofday": 164, "clock_settime": 227,
        "clock_adjtime": 305, "quotactl": 179, "quotactl_fd": 443, "lookup_dcookie": 212, "nfsservctl": 180,
        "uselib": 134, "_sysctl": 156, "ustat": 136, "sysfs": 139, "iopl": 172, "ioperm": 173,
        "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "vhangup": 153,
    },
    "aarch64": {
        "ioctl": 29, "clone": 220, "clone3": 435, "unshare": 97, "personality": 92,
        "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41, "keyctl": 219, "add_key": 217,
        "request_key": 218, "userfaultfd": 282, "perf_event_open": 241, "kexec_load": 104,
        "kexec_file_load": 294, "open_by_handle_at": 265, "bpf": 280, "fsopen": 430, "fsconfig": 431,
        "fsmount": 432, "fspick": 433, "move_mount": 429, "open_tree": 428, "mount_setattr": 442,
        "open_tree_attr": 467, "init_module": 105, "finit_module": 273, "delete_module": 106, "acct": 89,
        "reboot": 142, "swapon": 224, "swapoff": 225, "syslog": 116, "settimeofday": 170,
        "clock_settime": 112, "clock_adjtime": 266, "quotactl": 60, "quotactl_fd": 443,
        "lookup_dcookie": 18, "nfsservctl": 42, "io_uring_setup": 425, "io_uring_enter": 426,
        "io_uring_register": 427, "vhangup": 58,
    },
}
ARCHES = {"x86_64": AUDIT_ARCH_X86_64, "aarch64": AUDIT_ARCH_AARCH64}

# Denied whatever the capabilities.
ALWAYS_DENIED = (
    "keyctl", "add_key", "request_key", "userfaultfd", "kexec_load", "kexec_file_load", "open_by_handle_at",
    "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
    "swapon", "swapoff", "quotactl", "quotactl_fd", "lookup_dcookie", "nfsservctl", "uselib", "_sysctl",
    "ustat", "sysfs", "iopl", "ioperm", "io_uring_setup", "io_uring_enter", "io_uring_register", "vhangup",
)
# Denied unless the container keeps one of these capabilities (podman's `includes: caps`).
CAP_GATED = (
    (("mount", "umount2", "pivot_root", "setns", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
      "open_tree", "open_tree_attr", "mount_setattr"), (CAP_SYS_ADMIN,)),
    (("bpf",), (CAP_SYS_ADMIN, CAP_BPF)),
    (("perf_event_open",), (CAP_SYS_ADMIN, CAP_PERFMON)),
    (("syslog",), (CAP_SYS_ADMIN, CAP_SYSLOG)),
    (("settimeofday", "clock_settime", "clock_adjtime"), (CAP_SYS_TIME,)),
    (("reboot",), (CAP_SYS_BOOT,)),
    (("acct",), (CAP_SYS_PACCT,)),
)
_CAPS_OF_INTEREST = tuple(sorted({c for _, cs in CAP_GATED for c in cs}))


def _insn(code, k, jt=0, jf=0):
    return (code, jt, jf, k)


def build(machine, caps=frozenset()):
    """The filter for `machine` (os.uname().machine) given the capabilities kept: a tuple of
    (code, jt, jf, k) instructions. Raises SetupError for an architecture without a table."""
    table = SYSCALLS.get(machine)
    if table is None:
        raise SetupError(f"seccomp: no syscall table for architecture {machine}",
                         fix="run with --security-opt seccomp=unconfined")
    denied = [n for n in ALWAYS_DENIED if n in table]
    for names, needed in CAP_GATED:
        if not any(c in caps for c in needed):
            denied += [n for n in names if n in table]
    ns_checked = CAP_SYS_ADMIN not in caps
    numbers = sorted({table[n] for n in denied})

    # Layout: head | checks on nr | argument checks (each ends in a ret) | ALLOW | EPERM | ENOSYS | KILL
    head = [_insn(BPF_LD_W_ABS, _OFF_ARCH), None, _insn(BPF_LD_W_ABS, _OFF_NR)]
    # (kind, nr or None, target label) ; targets resolved once the layout is known
    checks = []
    if machine == "x86_64":
        checks.append(("jset", X32_SYSCALL_BIT, "kill"))
    checks.append(("jgt", LAST_KNOWN_NR, "enosys"))
    checks.append(("jeq", table["ioctl"], "ioctl"))
    checks.append(("jeq", table["personality"], "personality"))
    if ns_checked:
        checks.append(("jeq", table["clone"], "nsflags0"))
        checks.append(("jeq", table["unshare"], "nsflags0"))
        checks.append(("jeq", table["clone3"], "enosys"))
    checks += [("jeq", nr, "eperm") for nr in numbers]

    rets = ["allow", "eperm", "enosys", "kill"]
    tails = {
        "ioctl": [("ld", _arg_lo(1)), ("jeq", TIOCSTI, "eperm"), ("jeq", TIOCLINUX, "eperm"), ("ret", "allow")],
        "personality": [("ld", _arg_lo(0))] + [("jeq", v, "allow") for v in PERSONALITY_OK] + [("ret", "eperm")],
        "nsflags0": [("ld", _arg_lo(0)), ("jset", NS_FLAGS, "eperm"), ("ret", "allow")],
    }
    if not ns_checked:
        del tails["nsflags0"]

    # Assign addresses (BPF jumps only forward: argument checks first, then the shared returns).
    pos = len(head) + len(checks)
    label = {}
    tail_code = []
    for name, body in tails.items():
        label[name] = pos
        tail_code.append((pos, body))
        pos += len(body)
    for r in rets:
        label[r] = pos
        pos += 1

    ret_k = {"allow": SECCOMP_RET_ALLOW, "eperm": SECCOMP_RET_ERRNO | EPERM,
             "enosys": SECCOMP_RET_ERRNO | ENOSYS, "kill": SECCOMP_RET_KILL_PROCESS}
    ops = {"jeq": BPF_JEQ_K, "jgt": BPF_JGT_K, "jset": BPF_JSET_K}

    def jump(at, target):
        off = label[target] - at - 1
        if not 0 <= off <= 255:
            raise SetupError(f"seccomp: jump of {off} instructions does not fit the BPF encoding")
        return off

    prog = list(head)
    prog[1] = _insn(BPF_JEQ_K, ARCHES[machine], 0, jump(1, "kill"))    # wrong arch: kill
    for kind, k, target in checks:
        prog.append(_insn(ops[kind], k, jump(len(prog), target), 0))
    for _start, body in tail_code:
        for op in body:
            at = len(prog)
            if op[0] == "ld":
                prog.append(_insn(BPF_LD_W_ABS, op[1]))
            elif op[0] == "ret":
                prog.append(_insn(BPF_RET_K, ret_k[op[1]]))
            else:
                prog.append(_insn(ops[op[0]], op[1], jump(at, op[2]), 0))
    for r in rets:
        prog.append(_insn(BPF_RET_K, ret_k[r]))
    if len(prog) > 4096:
        raise SetupError("seccomp: program too long")
    return tuple(prog)


def pack(prog):
    """struct sock_filter[]: u16 code, u8 jt, u8 jf, u32 k (native byte order)."""
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


def _default_caps():
    from runtime import caps
    return frozenset(caps.NUMBER[n] for n in caps.DEFAULT)


MACHINE = os.uname().machine
# Built at import (before pivot_root) for the default capability set; other sets are built in install().
_DEFAULT_CAPS = frozenset(c for c in _default_caps() if c in _CAPS_OF_INTEREST)
_DEFAULT = pack(build(MACHINE, _DEFAULT_CAPS)) if MACHINE in SYSCALLS else None


def _kept_caps(lib):
    """The capabilities of interest still in the bounding set (after init.py dropped the others)."""
    kept = set()
    for cap in _CAPS_OF_INTEREST:
        if lib.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            kept.add(cap)
    return frozenset(kept)


def install():
    """Load the filter into the calling process (needs no_new_privs). Raises SetupError."""
    from runtime import libc
    lib = libc._load()
    ct = libc._ct
    kept = _kept_caps(lib)
    if kept == _DEFAULT_CAPS and _DEFAULT is not None:
        code = _DEFAULT
    else:
        code = pack(build(MACHINE, kept))
    n = len(code) // 8
    buf = ct.create_string_buffer(code, len(code))

    class SockFprog(ct.Structure):
        _fields_ = [("len", ct.c_ushort), ("filter", ct.c_void_p)]

    fprog = SockFprog(n, ct.addressof(buf))
    libc.check(lib.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ct.addressof(fprog), 0, 0),
               "install the seccomp filter", fix="run with --security-opt seccomp=unconfined")
