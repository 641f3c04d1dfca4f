"""The default seccomp filter: a classic BPF program built in pure Python, installed by init.py after the
capabilities are dropped and no_new_privs is set (`--security-opt seccomp=unconfined` turns it off).

In the spirit of podman's default profile (containers-common seccomp.json), but written as a deny list, so that
the program stays small (~90 instructions an ABI, built in well under a millisecond at import time) and every
syscall whose verdict does not depend on its arguments is served from the kernel's seccomp action cache:

* every ABI the kernel runs gets the same verdicts, as podman's archMap does: on x86_64 the native ABI, x32
  (nr with bit 30 set) and i386 (32-bit binaries); on aarch64 the native ABI and arm (AArch32: an armhf
  userland on a 64-bit Pi); on a 32-bit arm kernel, arm. The program first dispatches on the audit
  architecture to one block per ABI, each with that ABI's syscall numbers; any other architecture kills the
  process. The numbers below 424 are per ABI (checked in the tests against libseccomp's tables and the kernel
  headers); from 424 on every ABI shares one numbering.
* syscall numbers above the newest one this table knows (file_setattr, 469) return ENOSYS, as podman's
  allow-list does for syscalls it does not know: libc falls back, and a syscall added to the kernel later is
  not reachable until it is reviewed here. The ABI-private ranges stay reachable: x32's own numbers
  (512..547) and arm's private calls (breakpoint, cacheflush, usr26, usr32, set_tls, get_tls:
  0xf0001..0xf0006; armhf's libc calls set_tls at start-up).
* EPERM for: the kernel keyring (keyctl, add_key, request_key), userfaultfd, bpf, perf_event_open, kexec_*,
  modules, open_by_handle_at, swap, acct, reboot, syslog, setting the clock (also the 32-bit stime and the
  time64 calls), quotactl, io_uring, lookup_dcookie, nfsservctl, uselib, _sysctl, ustat, sysfs,
  iopl/ioperm, vhangup, personality values other than podman's allowed ones; ioctl TIOCSTI and TIOCLINUX
  (compared on the low 32 bits of the argument, which is all the kernel reads: setting the high bits does not
  get around it).
* Without CAP_SYS_ADMIN in the container's bounding set (the default), like podman: EPERM for mount, umount2
  (and i386's old umount), pivot_root, setns, the new mount API (fsopen, fsconfig, fsmount, fspick,
  move_mount, open_tree, open_tree_attr, mount_setattr), and for unshare/clone with any namespace flag (a
  nested user namespace would hand back a full capability set); clone3 returns ENOSYS so that libc falls back
  to clone, whose flags can be inspected. unshare/clone without namespace flags (threads, fork, CLONE_FS...)
  stay allowed. With --cap-add SYS_ADMIN those are allowed, as in podman; likewise bpf with BPF,
  perf_event_open with PERFMON, syslog with SYSLOG, clock setting with SYS_TIME, reboot with SYS_BOOT, acct
  with SYS_PACCT.
* ptrace and process_vm_readv/writev are allowed, as podman does on kernels >= 4.8 (seccomp cannot be
  bypassed through ptrace any more; the PID namespace limits the tracees to the container).

How it is loaded: process I imports this module (which builds the default program) while the launcher writes
the ID maps; C inherits it and only loads it with prctl (0.28 ms CPU in bench/seccomp.py, 0.13 ms of it the
kernel's: it walks the program for every syscall number of every ABI to build its action cache, hence the
binary search per ABI instead of a list of checks).

Why not libseccomp: building and loading the same rules through libseccomp (ctypes) costs 1.8 to 3.1 ms CPU
per container start here, over the 1 ms budget; caching its exported BPF per user would put a file that
decides the policy in the user's (and so any of the user's containers') reach; and libseccomp 2.5 (Debian 12)
neither knows the syscalls after Linux 5.19 (open_tree_attr) nor expresses "personality not in this set" or
ENOSYS for numbers newer than its table. The tests use libseccomp as the oracle for the per-ABI numbers.
"""
import os
import struct

from runtime.errors import SetupError

# <linux/audit.h>
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
# <asm/unistd.h>: x32 numbers carry bit 30; x32's own calls are 512..547 (syscall_64.tbl)
X32_SYSCALL_BIT = 0x40000000
X32_OWN_FIRST, X32_OWN_LAST = 512, 547
# <asm/unistd.h> (arm): __ARM_NR_BASE + 1..6 = breakpoint, cacheflush, usr26, usr32, set_tls, get_tls
ARM_PRIVATE_FIRST, ARM_PRIVATE_LAST = 0x0F0001, 0x0F0006

# The ABIs each kernel (os.uname().machine) runs, native first: podman's archMap (amd64: x86_64, x86, x32;
# arm64: aarch64, arm). A 32-bit arm kernel runs arm only.
ABIS = {"x86_64": ("x86_64", "x32", "i386"), "aarch64": ("aarch64", "arm"), "armv7l": ("arm",),
        "armv6l": ("arm",)}
AUDIT_ARCH = {"x86_64": AUDIT_ARCH_X86_64, "x32": AUDIT_ARCH_X86_64, "i386": AUDIT_ARCH_I386,
              "aarch64": AUDIT_ARCH_AARCH64, "arm": AUDIT_ARCH_ARM}

# <linux/seccomp.h>
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23

# <linux/filter.h>
BPF_LD_W_ABS = 0x20
BPF_JA = 0x05
BPF_JEQ_K = 0x15
BPF_JGT_K = 0x25
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]  (little endian)
_OFF_NR, _OFF_ARCH = 0, 4
_SOCK_FILTER = struct.Struct("=HBBI")


def _arg_lo(i):
    return 16 + 8 * i


EPERM, ENOSYS = 1, 38
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
# CLONE_NEWTIME | NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
NS_FLAGS = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
# podman allows personality(2) only with these: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, query.
PERSONALITY_OK = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
LAST_KNOWN_NR = 469                     # file_setattr (Linux 6.17)

# <linux/capability.h>
CAP_SYS_MODULE, CAP_SYS_BOOT, CAP_SYS_PACCT, CAP_SYS_ADMIN, CAP_SYS_TIME = 16, 22, 20, 21, 25
CAP_SYSLOG, CAP_PERFMON, CAP_BPF = 34, 38, 39

# From 424 (pidfd_send_signal, Linux 5.1) on, every ABI numbers its syscalls alike (x32 adds bit 30).
GENERIC = {
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "mount_setattr": 442,
    "quotactl_fd": 443, "open_tree_attr": 467,
}
# Below 424, per ABI: x86_64 (arch/x86/entry/syscalls/syscall_64.tbl), x32 (the same table: common and x32
# entries, without bit 30), i386 (syscall_32.tbl), aarch64 (asm-generic/unistd.h), arm
# (arch/arm/tools/syscall.tbl). A name missing from an ABI does not exist there.
_LEGACY = {
    "x86_64": {
        "ioctl": 16, "clone": 56, "unshare": 272, "personality": 135, "setns": 308, "mount": 165,
        "umount2": 166, "pivot_root": 155, "keyctl": 250, "add_key": 248, "request_key": 249,
        "userfaultfd": 323, "perf_event_open": 298, "kexec_load": 246, "kexec_file_load": 320,
        "open_by_handle_at": 304, "bpf": 321, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "create_module": 174, "query_module": 178, "get_kernel_syms": 177, "acct": 163, "reboot": 169,
        "swapon": 167, "swapoff": 168, "syslog": 103, "settimeofday": 164, "clock_settime": 227,
        "clock_adjtime": 305, "quotactl": 179, "lookup_dcookie": 212, "nfsservctl": 180, "uselib": 134,
        "_sysctl": 156, "ustat": 136, "sysfs": 139, "iopl": 172, "ioperm": 173, "vhangup": 153,
    },
    "x32": {
        "ioctl": 514, "clone": 56, "unshare": 272, "personality": 135, "setns": 308, "mount": 165,
        "umount2": 166, "pivot_root": 155, "keyctl": 250, "add_key": 248, "request_key": 249,
        "userfaultfd": 323, "perf_event_open": 298, "kexec_load": 528, "kexec_file_load": 320,
        "open_by_handle_at": 304, "bpf": 321, "init_module": 175, "finit_module": 313, "delete_module": 176,
        "acct": 163, "reboot": 169, "swapon": 167, "swapoff": 168, "syslog": 103, "settimeofday": 164,
        "clock_settime": 227, "clock_adjtime": 305, "quotactl": 179, "lookup_dcookie": 212, "ustat": 136,
        "sysfs": 139, "iopl": 172, "ioperm": 173, "vhangup": 153,
    },
    "i386": {
        "ioctl": 54, "clone": 120, "unshare": 310, "personality": 136, "setns": 346, "mount": 21,
        "umount": 22, "umount2": 52, "pivot_root": 217, "keyctl": 288, "add_key": 286, "request_key": 287,
        "userfaultfd": 374, "perf_event_open": 336, "kexec_load": 283, "open_by_handle_at": 342, "bpf": 357,
        "init_module": 128, "finit_module": 350, "delete_module": 129, "create_module": 127,
        "query_module": 167, "get_kernel_syms": 130, "acct": 51, "reboot": 88, "swapon": 87, "swapoff": 115,
        "syslog": 103, "settimeofday": 79, "stime": 25, "clock_settime": 264, "clock_adjtime": 343,
        "clock_settime64": 404, "clock_adjtime64": 405, "quotactl": 131, "lookup_dcookie": 253,
        "nfsservctl": 169, "uselib": 86, "_sysctl": 149, "ustat": 62, "sysfs": 135, "iopl": 110,
        "ioperm": 101, "vhangup": 111,
    },
    "aarch64": {
        "ioctl": 29, "clone": 220, "unshare": 97, "personality": 92, "setns": 268, "mount": 40, "umount2": 39,
        "pivot_root": 41, "keyctl": 219, "add_key": 217, "request_key": 218, "userfaultfd": 282,
        "perf_event_open": 241, "kexec_load": 104, "kexec_file_load": 294, "open_by_handle_at": 265, "bpf": 280,
        "init_module": 105, "finit_module": 273, "delete_module": 106, "acct": 89, "reboot": 142,
        "swapon": 224, "swapoff": 225, "syslog": 116, "settimeofday": 170, "clock_settime": 112,
        "clock_adjtime": 266, "quotactl": 60, "lookup_dcookie": 18, "nfsservctl": 42, "vhangup": 58,
    },
    "arm": {
        "ioctl": 54, "clone": 120, "unshare": 337, "personality": 136, "setns": 375, "mount": 21,
        "umount2": 52, "pivot_root": 218, "keyctl": 311, "add_key": 309, "request_key": 310,
        "userfaultfd": 388, "perf_event_open": 364, "kexec_load": 347, "kexec_file_load": 401,
        "open_by_handle_at": 371, "bpf": 386, "init_module": 128, "finit_module": 379, "delete_module": 129,
        "acct": 51, "reboot": 88, "swapon": 87, "swapoff": 115, "syslog": 103, "settimeofday": 79,
        "clock_settime": 262, "clock_adjtime": 372, "clock_settime64": 404, "clock_adjtime64": 405,
        "quotactl": 131, "lookup_dcookie": 249, "nfsservctl": 169, "uselib": 86, "_sysctl": 149, "ustat": 62,
        "sysfs": 135, "vhangup": 111,
    },
}
SYSCALLS = {abi: {**legacy, **GENERIC} for abi, legacy in _LEGACY.items()}

# Denied whatever the capabilities.
ALWAYS_DENIED = (
    "keyctl", "add_key", "request_key", "userfaultfd", "kexec_load", "kexec_file_load", "open_by_handle_at",
    "init_module", "finit_module", "delete_module", "create_module", "query_module", "get_kernel_syms",
    "swapon", "swapoff", "quotactl", "quotactl_fd", "lookup_dcookie", "nfsservctl", "uselib", "_sysctl",
    "ustat", "sysfs", "iopl", "ioperm", "io_uring_setup", "io_uring_enter", "io_uring_register", "vhangup",
)
# Denied unless the container keeps one of these capabilities (podman's `includes: caps`).
CAP_GATED = (
    (("mount", "umount", "umount2", "pivot_root", "setns", "fsopen", "fsconfig", "fsmount", "fspick",
      "move_mount", "open_tree", "open_tree_attr", "mount_setattr"), (CAP_SYS_ADMIN,)),
    (("bpf",), (CAP_SYS_ADMIN, CAP_BPF)),
    (("perf_event_open",), (CAP_SYS_ADMIN, CAP_PERFMON)),
    (("syslog",), (CAP_SYS_ADMIN, CAP_SYSLOG)),
    (("settimeofday", "stime", "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64"),
     (CAP_SYS_TIME,)),
    (("reboot",), (CAP_SYS_BOOT,)),
    (("acct",), (CAP_SYS_PACCT,)),
)
_CAPS_OF_INTEREST = tuple(sorted({c for _, cs in CAP_GATED for c in cs}))


class _Backwards:
    """Classic BPF jumps only forward, so the program is written from its end: when a jump is emitted, every
    target is known, and its offset is the count of instructions emitted since the target."""

    def __init__(self):
        self.rev = []           # the program as struct sock_filter, last instruction first

    def here(self):
        return len(self.rev)    # a label: the position, counted from the end, of the next instruction emitted

    def ret(self, k):
        self.rev.append(_SOCK_FILTER.pack(BPF_RET_K, 0, 0, k))
        return len(self.rev) - 1

    def ld(self, offset):
        self.rev.append(_SOCK_FILTER.pack(BPF_LD_W_ABS, 0, 0, offset))

    def jump(self, code, k, true=None, false=None):
        """A conditional jump to the labels `true`/`false` (None: the next instruction). Offsets are checked
        once a block is done (_abi_block): every conditional jump stays inside its block."""
        rev = self.rev
        n = len(rev) - 1
        rev.append(_SOCK_FILTER.pack(code, 0 if true is None else n - true, 0 if false is None else n - false, k))

    def ja(self, target):
        self.rev.append(_SOCK_FILTER.pack(BPF_JA, 0, 0, len(self.rev) - target - 1))

    def program(self):
        return b"".join(reversed(self.rev))


def _search(b, nrs, targets, miss, leaf=4):
    """Emit (backwards) a binary search of the sorted numbers `nrs`: a match jumps to targets[nr], anything
    else to `miss`. About log2(len/leaf) + leaf compares a syscall instead of len: the kernel walks the
    program once for every syscall number when it builds its action cache at load time, and again for every
    call whose verdict depends on its arguments."""
    if len(nrs) <= leaf:
        b.jump(BPF_JEQ_K, nrs[-1], targets[nrs[-1]], miss)
        for nr in reversed(nrs[:-1]):
            b.jump(BPF_JEQ_K, nr, targets[nr])
        return
    mid = len(nrs) // 2
    _search(b, nrs[mid:], targets, miss, leaf)
    upper = b.here() - 1
    _search(b, nrs[:mid], targets, miss, leaf)
    b.jump(BPF_JGT_K, nrs[mid - 1], upper)


def _abi_block(b, abi, caps, x32=None):
    """Emit (backwards) the checks of one ABI; `x32` is the label of the x32 block (x86_64 only). Returns the
    label of the block's first instruction."""
    table = SYSCALLS[abi]
    base = X32_SYSCALL_BIT if abi == "x32" else 0
    denied = [n for n in ALWAYS_DENIED if n in table]
    for names, needed in CAP_GATED:
        if not any(c in caps for c in needed):
            denied += [n for n in names if n in table]
    ns_checked = CAP_SYS_ADMIN not in caps

    end = b.here()
    enosys = b.ret(SECCOMP_RET_ERRNO | ENOSYS)
    eperm = b.ret(SECCOMP_RET_ERRNO | EPERM)
    nsflags = None
    if ns_checked:                                      # clone, unshare: any namespace flag in arg 0
        b.ret(SECCOMP_RET_ALLOW)
        b.jump(BPF_JSET_K, NS_FLAGS, eperm)
        b.ld(_arg_lo(0))
        nsflags = b.here() - 1
    ok = b.ret(SECCOMP_RET_ALLOW)                       # personality: podman's values only
    b.ret(SECCOMP_RET_ERRNO | EPERM)
    for v in reversed(PERSONALITY_OK):
        b.jump(BPF_JEQ_K, v, ok)
    b.ld(_arg_lo(0))
    personality = b.here() - 1
    b.ret(SECCOMP_RET_ALLOW)                            # ioctl: TIOCSTI, TIOCLINUX on the low 32 bits
    b.jump(BPF_JEQ_K, TIOCLINUX, eperm)
    b.jump(BPF_JEQ_K, TIOCSTI, eperm)
    b.ld(_arg_lo(1))
    ioctl = b.here() - 1
    allow = b.ret(SECCOMP_RET_ALLOW)                    # not listed: allowed
    targets = {base + table[n]: eperm for n in denied}
    if ns_checked:
        targets.update({base + table["clone"]: nsflags, base + table["unshare"]: nsflags,
                        base + table["clone3"]: enosys})
    targets.update({base + table["ioctl"]: ioctl, base + table["personality"]: personality})
    _search(b, sorted(targets), targets, allow)
    known = b.here() - 1
    b.jump(BPF_JGT_K, base + LAST_KNOWN_NR, enosys)      # beyond the newest syscall reviewed here: ENOSYS
    if abi == "x32":                                    # x32's own numbers, 512..547
        b.jump(BPF_JGE_K, base + X32_OWN_FIRST, known)
        b.jump(BPF_JGT_K, base + X32_OWN_LAST, enosys)
    elif abi == "arm":                                  # arm's private calls (set_tls, cacheflush ...)
        b.jump(BPF_JGE_K, ARM_PRIVATE_FIRST, allow)
        b.jump(BPF_JGT_K, ARM_PRIVATE_LAST, enosys)
    if b.here() - end > 256:
        raise SetupError(f"seccomp: the {abi} block is too long for the BPF jump encoding")
    if x32 is not None:                                 # x32 shares the audit arch: bit 30 tells them apart
        native = b.here() - 1
        b.ja(x32)
        b.jump(BPF_JSET_K, X32_SYSCALL_BIT, None, native)
    b.ld(_OFF_NR)
    return b.here() - 1


def packed(machine, caps=frozenset()):
    """The filter for a kernel of `machine` (os.uname().machine) given the capabilities kept, as the array of
    struct sock_filter the kernel takes. Raises SetupError for an architecture without a table."""
    abis = ABIS.get(machine)
    if abis is None:
        raise SetupError(f"seccomp: no syscall table for architecture {machine}",
                         fix="run with --security-opt seccomp=unconfined")
    b = _Backwards()
    start = {}
    try:
        for abi in reversed(abis):                      # blocks in ABI order, native first
            start[abi] = _abi_block(b, abi, caps, start.get("x32") if abi == "x86_64" else None)
    except struct.error:                                # a jump offset beyond a u8
        raise SetupError(f"seccomp: a block for {machine} is too long for the BPF jump encoding") from None
    b.ret(SECCOMP_RET_KILL_PROCESS)                     # any other architecture
    for abi in reversed(abis):                          # head: one dispatch per audit architecture
        if abi != "x32":
            b.ja(start[abi])
            b.jump(BPF_JEQ_K, AUDIT_ARCH[abi], None, b.here() - 2)     # else: skip the ja
    b.ld(_OFF_ARCH)
    if len(b.rev) > 4096:
        raise SetupError("seccomp: program too long")
    return b.program()


def build(machine, caps=frozenset()):
    """The same program as (code, jt, jf, k) tuples (for the tests' BPF interpreter)."""
    return tuple(_SOCK_FILTER.iter_unpack(packed(machine, caps)))


def pack(prog):
    """struct sock_filter[]: u16 code, u8 jt, u8 jf, u32 k (native byte order)."""
    return b"".join([_SOCK_FILTER.pack(*insn) for insn in prog])


def _default_caps():
    from runtime import caps
    return frozenset(caps.NUMBER[n] for n in caps.DEFAULT)


MACHINE = os.uname().machine
# Built at import (before pivot_root) for the default capability set; other sets are built in install().
_DEFAULT_CAPS = frozenset(c for c in _default_caps() if c in _CAPS_OF_INTEREST)
_DEFAULT = packed(MACHINE, _DEFAULT_CAPS) if MACHINE in ABIS else None


def _kept_caps(lib):
    """The capabilities of interest still in the bounding set (after init.py dropped the others)."""
    kept = set()
    for cap in _CAPS_OF_INTEREST:
        if lib.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1:
            kept.add(cap)
    return frozenset(kept)


def install():
    """Load the filter into the calling process (needs no_new_privs). Raises SetupError: a filter that cannot
    be built or loaded never leaves a container running without one."""
    from runtime import libc
    kept = _kept_caps(libc._load())
    load(_DEFAULT if kept == _DEFAULT_CAPS and _DEFAULT is not None else packed(MACHINE, kept))


def load(code):
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, struct sock_fprog) with the packed program `code`."""
    from runtime import libc
    lib = libc._load()
    ct = libc._ct
    buf = ct.create_string_buffer(code, len(code))
    fprog = ct.create_string_buffer(struct.pack("HP", len(code) // 8, ct.addressof(buf)))  # struct sock_fprog
    libc.check(lib.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ct.addressof(fprog), 0, 0),
               "install the seccomp filter", fix="run with --security-opt seccomp=unconfined")
