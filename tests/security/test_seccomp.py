"""The default seccomp filter (runtime/seccomp.py): each blocked call fails with EPERM inside a container and
does not with --security-opt seccomp=unconfined where the kernel itself allows it; the same verdicts for the
host's 32-bit ABI (i386 here: a 32-bit busybox rootfs runs, a 32-bit probe gets the native results); the
architecture check; the program itself, checked instruction by instruction with a small BPF interpreter for
every ABI of x86_64 and aarch64 kernels (the Pis: aarch64 and armhf), so that the arm tables are exercised on
this x86_64 machine too; the per-ABI syscall numbers against libseccomp's tables and the kernel headers."""
import os
import struct
import subprocess
import sys
import time

import pytest

from compat_helpers import compat, compat_rootfs, probe32  # noqa: F401  (fixtures)
from conftest import REPO, container_user, missing, run, run_args, user_env
from runtime import seccomp as S
from runtime.rootfs import elf_arch
from sec_helpers import parse_sys, probe, run_probe  # noqa: F401  (probe is a fixture)

UNCONFINED = ("--security-opt", "seccomp=unconfined")

# name in probe.c -> result without the filter, on this host's kernel, as a non-EPERM proof that the filter (and
# not the kernel) is what says no. None: the kernel itself refuses with EPERM here (no capability inside), so the
# filter is defence in depth for that call.
BLOCKED = {
    "keyctl": "OK", "add_key": "OK", "request_key": "ENOKEY", "userfaultfd": "OK",
    "perf_event_open": "EFAULT", "kexec_load": "!EPERM", "kexec_file_load": "!EPERM",
    "open_by_handle_at": "EFAULT", "bpf": "EINVAL", "fsconfig": "EINVAL", "open_tree": "EINVAL",
    "open_tree_attr": "EINVAL", "mount_setattr": "EINVAL", "setns": "EBADF", "unshare_user": "OK",
    "clone_user": "OK", "personality_norandom": "OK", "io_uring_setup": "EFAULT", "clock_settime": "EINVAL",
    "init_module": "!EPERM", "finit_module": "!EPERM", "tiocsti": "OK", "tiocsti_hibits": "OK",
    "tioclinux": "ENOTTY",
    "fsopen": None, "fsmount": None, "fspick": None, "move_mount": None, "mount": None, "umount2": None,
    "pivot_root": None, "swapon": None, "syslog": None, "acct": None, "reboot": None, "clone_user_hibits": None,
}
ALLOWED = ("getpid", "fork", "clone_fork", "unshare_fs", "ptrace_child", "personality_query", "tiocgwinsz")


@pytest.fixture(scope="module")
def results(probe):
    names = list(BLOCKED) + list(ALLOWED) + ["clone3", "unknown_nr"]
    confined = run_probe(probe, ["sys"] + names)
    unconfined = run_probe(probe, ["sys"] + names, opts=UNCONFINED)
    assert confined.returncode == 0, confined.stderr
    assert unconfined.returncode == 0, unconfined.stderr
    return parse_sys(confined.stdout), parse_sys(unconfined.stdout)


@pytest.mark.parametrize("name", list(BLOCKED))
def test_blocked_call_fails_with_eperm(results, name):
    confined, unconfined = results
    assert confined.get(name) == "EPERM", (name, confined.get(name))
    expect = BLOCKED[name]
    if expect is None:
        return
    got = unconfined.get(name)
    if expect == "!EPERM":
        assert got not in (None, "EPERM") and "FAILED" not in got, (name, got)
    else:
        assert got == expect, f"{name} without the filter: {got}, expected {expect}: the test proves nothing"


@pytest.mark.parametrize("name", ALLOWED)
def test_ordinary_calls_still_work(results, name):
    confined, unconfined = results
    assert confined.get(name) == "OK", (name, confined.get(name))
    assert unconfined.get(name) == "OK", (name, unconfined.get(name))


def test_clone3_says_enosys_so_libc_falls_back_to_clone(results):
    confined, unconfined = results
    assert confined["clone3"] == "ENOSYS"
    assert unconfined["clone3"] == "EINVAL"
    assert confined["unknown_nr"] == "ENOSYS"


def test_filter_is_installed_and_unconfined_opts_out(rootfs):
    r = run(["/bin/sh", "-c", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status"])
    assert r.returncode == 0, r.stderr
    assert "Seccomp:\t2" in r.stdout and "NoNewPrivs:\t1" in r.stdout, r.stdout
    r = run(list(UNCONFINED) + ["/bin/sh", "-c", "grep -E '^Seccomp:' /proc/self/status"])
    assert r.stdout.strip() == "Seccomp:\t0", r.stdout
    r = run(["--init", "/bin/sh", "-c", "grep -E '^Seccomp:' /proc/self/status"])
    assert r.stdout.strip() == "Seccomp:\t2", "the --init reaper's command must be filtered too"


def test_busybox_unshare_and_mount_are_refused(rootfs):
    r = run(["/bin/sh", "-c", "unshare -U -r id; echo rc=$?; unshare -m true; echo rc=$?"])
    assert "rc=1\nrc=1" in r.stdout, (r.stdout, r.stderr)
    assert "Operation not permitted" in r.stderr


def test_cap_sys_admin_lifts_the_mount_rules_like_podman(rootfs):
    r = run(["--cap-add", "SYS_ADMIN", "/bin/sh", "-c", "mount -t tmpfs none /mnt && echo mounted"])
    assert r.stdout.strip() == "mounted", (r.stdout, r.stderr)


# --- the host's 32-bit ABI (i386 on x86_64, arm on aarch64) -----------------------------------------------

# Calls that exist only in the 32-bit ABIs: i386's old umount and stime, the time64 clock calls. Unconfined
# result as in BLOCKED (None: the kernel itself refuses with EPERM).
BLOCKED_32 = {"umount_old": None, "stime": None, "clock_settime64": "EINVAL", "clock_adjtime64": "EFAULT"}
NAMES = list(BLOCKED) + list(ALLOWED) + ["clone3", "unknown_nr"] + list(BLOCKED_32)


def test_32bit_rootfs_runs_under_the_default_filter(compat_rootfs):
    abi, _d, arch, _cc, _p = compat()
    assert elf_arch(compat_rootfs / "bin" / "busybox") == arch
    r = run(["/bin/sh", "-c", "echo hello from $(cat /etc/os-release | grep PIRUN_ARCH); ls /; "
             "grep Seccomp: /proc/self/status; unshare -U true; echo unshare=$?"], rootfs=compat_rootfs)
    assert r.returncode == 0, (abi, r.returncode, r.stdout, r.stderr)
    assert f"hello from PIRUN_ARCH={arch}" in r.stdout, r.stdout
    assert "bin\n" in r.stdout and "proc\n" in r.stdout, r.stdout
    assert "Seccomp:\t2" in r.stdout and "unshare=1" in r.stdout, r.stdout        # filtered, not unconfined
    assert "Operation not permitted" in r.stderr, r.stderr


def test_check_takes_the_32bit_rootfs_for_a_native_one(compat_rootfs):
    """run.py --check runs the rootfs's busybox: a 32-bit userland runs on the 64-bit kernel itself (no
    binfmt_misc entry needed), and its uname -m names the kernel."""
    _abi, _d, arch, _cc, _p = compat()
    r = run(["--check", "--rootfs", compat_rootfs], raw_argv=True)
    line = [ln for ln in r.stdout.splitlines() if ln.split()[1:2] == ["rootfs"]]
    assert line and line[0].startswith("ok "), (r.stdout, r.stderr)
    assert f"{arch}, native 32-bit" in line[0] and f"runs: uname -m = {os.uname().machine}" in line[0], line


@pytest.fixture(scope="module")
def results32(probe, probe32):
    """{name: result} for the native and the 32-bit probe, each with and without the filter."""
    out = {}
    for bits, d in (("native", probe), ("32", probe32)):
        for mode, opts in (("confined", ()), ("unconfined", UNCONFINED)):
            r = run_probe(d, ["sys"] + NAMES, opts=opts)
            assert r.returncode == 0, (bits, mode, r.returncode, r.stdout, r.stderr)
            got = parse_sys(r.stdout)
            assert list(got) == NAMES, (bits, mode, r.stdout)
            out[bits, mode] = got
    return out


def test_32bit_calls_get_the_native_verdicts(results32):
    native, b32 = results32["native", "confined"], results32["32", "confined"]
    differ = {n: (native[n], b32[n]) for n in NAMES if b32[n] != "ABSENT" and native[n] != "ABSENT"
              and b32[n] != native[n]}
    assert not differ, f"32-bit verdicts differ from the native ones (native, 32-bit): {differ}"
    assert [n for n in BLOCKED if b32[n] not in ("EPERM", "ABSENT")] == [], b32
    assert all(b32[n] == "OK" for n in ALLOWED), b32
    assert (b32["clone3"], b32["unknown_nr"]) == ("ENOSYS", "ENOSYS"), b32


def test_32bit_only_calls_are_blocked_too(results32):
    got, unconfined = results32["32", "confined"], results32["32", "unconfined"]
    abi = compat()[0]
    expected = dict(BLOCKED_32) if abi == "i386" else {"clock_settime64": "EINVAL", "clock_adjtime64": "EFAULT"}
    for name, without in expected.items():
        assert got[name] == "EPERM", (name, got[name])
        if without is not None:
            assert unconfined[name] == without, f"{name} without the filter: {unconfined[name]}: proves nothing"


def test_32bit_calls_are_what_the_filter_blocks(results32):
    """Without the filter the 32-bit calls reach the kernel and get the same answers as the native ones: the
    filter, not the kernel or the ABI, is what says EPERM above."""
    native, b32 = results32["native", "unconfined"], results32["32", "unconfined"]
    for name, expect in BLOCKED.items():
        if expect is None or b32[name] == "ABSENT":
            continue
        assert b32[name] == native[name] and b32[name] != "EPERM", (name, native[name], b32[name])


def test_x86_compat_abi_syscalls_run(probe):
    """The native probe making one x32 and one i386 (int 0x80) getpid: answered, as without the filter (this
    kernel has x32 turned off and answers ENOSYS either way: the program checks below cover x32). A 64-bit
    arm process cannot make AArch32 calls: on aarch64 the 32-bit probe above is the check."""
    abis = {"x86_64": ("x32", "i386"), "aarch64": ()}[os.uname().machine]
    for abi in abis:
        r = run_probe(probe, [abi])
        free = run_probe(probe, [abi], opts=UNCONFINED)
        assert free.returncode == 0, (abi, free.stdout, free.stderr)
        assert r.returncode == 0, (abi, r.returncode, r.stdout, r.stderr)      # 159: killed (SIGSYS)
        assert r.stdout == free.stdout, (r.stdout, free.stdout)


def _under_a_filter_that_refuses_filters(args):
    """run.py started below a seccomp filter that answers prctl(PR_SET_SECCOMP) with EINVAL (every other
    call allowed): the kernel itself refuses pirun's filter. As root the wrapper loads it without
    no_new_privs and then becomes the test user, so that newuidmap keeps its setuid bit."""
    prctl_nr = {"x86_64": 157, "aarch64": 167}[os.uname().machine]
    _name, uid, gid, _home = container_user()
    code = ("import ctypes, os, struct, sys\n"
            f"f = [(0x20, 0, 0, 0), (0x15, 0, 3, {prctl_nr}), (0x20, 0, 0, 16), (0x15, 0, 1, 22),"
            " (0x06, 0, 0, 0x50016), (0x06, 0, 0, 0x7fff0000)]\n"
            "prog = b''.join(struct.pack('=HBBI', *i) for i in f)\n"
            "buf = ctypes.create_string_buffer(prog)\n"
            "fprog = ctypes.create_string_buffer(struct.pack('HP', len(f), ctypes.addressof(buf)))\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4\n"
            "if os.getuid() != 0: assert libc.prctl(38, 1, 0, 0, 0) == 0\n"
            "assert libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0, ctypes.get_errno()\n"
            f"if os.getuid() == 0: os.setgroups([]); os.setgid({gid}); os.setuid({uid})\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n")
    return subprocess.run([sys.executable, "-c", code] + run_args(args), capture_output=True, text=True,
                          timeout=60, env=user_env(), cwd="/")


def test_a_filter_that_cannot_be_loaded_stops_the_container(rootfs):
    """Fail closed: when the kernel refuses the filter, the container does not start without one: 125, one
    line naming the fix; seccomp=unconfined is the way out."""
    r = _under_a_filter_that_refuses_filters(["/bin/echo", "STARTED"])
    assert "STARTED" not in r.stdout, "the container ran although its filter could not be loaded"
    assert r.returncode == 125, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("run.py: warning")]
    assert len(lines) == 1, r.stderr
    assert lines[0] == ("run.py: error: install the seccomp filter: Invalid argument; "
                        "fix: run with --security-opt seccomp=unconfined"), r.stderr
    r = _under_a_filter_that_refuses_filters(list(UNCONFINED) + ["/bin/echo", "STARTED"])
    assert r.returncode == 0 and r.stdout.strip() == "STARTED", (r.returncode, r.stdout, r.stderr)


# --- the program itself -----------------------------------------------------------------------------------

def emulate(prog, nr, arch, args=(0, 0, 0, 0, 0, 0)):
    data = struct.pack("<iIQ6Q", nr if nr < 1 << 31 else nr - (1 << 32), arch, 0, *(list(args) + [0] * 6)[:6])
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == S.BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == S.BPF_RET_K:
            return k
        elif code == S.BPF_JA:
            pc += 1 + k
        else:
            hit = {S.BPF_JEQ_K: acc == k, S.BPF_JGT_K: acc > k, S.BPF_JGE_K: acc >= k,
                   S.BPF_JSET_K: bool(acc & k)}[code]
            pc += 1 + (jt if hit else jf)


EPERM, ENOSYS = S.SECCOMP_RET_ERRNO | 1, S.SECCOMP_RET_ERRNO | 38
ALLOW, KILL = S.SECCOMP_RET_ALLOW, S.SECCOMP_RET_KILL_PROCESS
# (kernel, ABI): every ABI the kernels pirun runs on execute (written out: an ABI left out of the filter must
# fail here, not vanish from the parameters)
KERNEL_ABIS = [("x86_64", "x86_64"), ("x86_64", "x32"), ("x86_64", "i386"), ("aarch64", "aarch64"),
               ("aarch64", "arm"), ("armv7l", "arm")]
READ = {"x86_64": 0, "x32": 0, "i386": 3, "aarch64": 63, "arm": 3}
ARM_SET_TLS, ARM_CACHEFLUSH = 0x0F0005, 0x0F0002


def nr_of(abi, name):
    return S.SYSCALLS[abi][name] | (S.X32_SYSCALL_BIT if abi == "x32" else 0)


@pytest.mark.parametrize("machine,abi", KERNEL_ABIS, ids=[f"{m}-{a}" for m, a in KERNEL_ABIS])
def test_program_verdicts(machine, abi):
    prog = S.build(machine)
    arch = S.AUDIT_ARCH[abi]

    def v(name, *args):
        return emulate(prog, nr_of(abi, name), arch, args)

    for name in S.ALWAYS_DENIED + ("mount", "umount", "umount2", "pivot_root", "setns", "fsopen", "open_tree",
                                   "open_tree_attr", "bpf", "perf_event_open", "stime", "clock_settime64"):
        if name in S.SYSCALLS[abi]:
            assert v(name) == EPERM, name
    nr_read = READ[abi] | (S.X32_SYSCALL_BIT if abi == "x32" else 0)
    assert emulate(prog, nr_read, arch) == ALLOW
    assert v("ioctl", 1, 0x5412) == EPERM
    assert v("ioctl", 1, (1 << 32) | 0x5412) == EPERM
    assert v("ioctl", 1, 0x541C) == EPERM
    assert v("ioctl", 1, 0x5413) == ALLOW                                       # TIOCGWINSZ
    assert v("clone", 0x10000000 | 17) == EPERM
    assert v("clone", 0x003D0F00) == ALLOW                                      # a pthread_create
    assert v("unshare", 0x80) == EPERM                                          # CLONE_NEWTIME
    assert v("unshare", 0x200) == ALLOW                                         # CLONE_FS
    assert v("clone3") == ENOSYS
    assert v("personality", 0xFFFFFFFF) == ALLOW
    assert v("personality", 0x0040000) == EPERM
    base = S.X32_SYSCALL_BIT if abi == "x32" else 0
    assert emulate(prog, base + 470, arch) == ENOSYS
    assert emulate(prog, base + 0x7FFF, arch) == ENOSYS
    if abi == "x86_64":
        assert emulate(prog, S.X32_SYSCALL_BIT | 16, arch, (1, 0x5412)) == ALLOW   # x32 has no ioctl 16
    if abi == "x32":
        assert emulate(prog, base + 515, arch) == ALLOW                           # readv: x32's own range
        assert emulate(prog, base + 548, arch) == ENOSYS
        assert emulate(prog, base + 511, arch) == ENOSYS
    if abi == "arm":
        assert emulate(prog, ARM_SET_TLS, arch) == ALLOW, "armhf's libc calls set_tls at start-up"
        assert emulate(prog, ARM_CACHEFLUSH, arch) == ALLOW
        assert emulate(prog, 0x0F0000, arch) == ENOSYS
        assert emulate(prog, 0x0F0007, arch) == ENOSYS


@pytest.mark.parametrize("machine", list(S.ABIS))
def test_other_architectures_are_killed(machine):
    prog = S.build(machine)
    own = {S.AUDIT_ARCH[a] for a in S.ABIS[machine]}
    for arch in set(S.AUDIT_ARCH.values()) - own | {0xC00000F3, 0x8000003E}:      # riscv64, a made-up one
        assert emulate(prog, 39, arch) == KILL, hex(arch)


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_compat_abis_get_the_native_verdicts(machine):
    """For every call the filter knows by name, and a spread of arguments, each compat ABI answers as the
    native one does."""
    prog = S.build(machine)
    native, *compats = [abi for m, abi in KERNEL_ABIS if m == machine]
    names = {n for abi in [native] + compats for n in S.SYSCALLS[abi]}
    argsets = [(), (0x10000000,), (0x200,), (1, 0x5412), (1, 0x541C), (0x8,), (0x40000,), (0xFFFFFFFF,)]
    for abi in compats:
        for name in sorted(names & set(S.SYSCALLS[abi]) & set(S.SYSCALLS[native])):
            for args in argsets:
                want = emulate(prog, nr_of(native, name), S.AUDIT_ARCH[native], args)
                got = emulate(prog, nr_of(abi, name), S.AUDIT_ARCH[abi], args)
                assert got == want, (abi, name, args, hex(got), hex(want))


def test_cap_sys_admin_program_allows_mount_but_still_blocks_keys():
    for machine, abi in KERNEL_ABIS:
        prog = S.build(machine, frozenset({S.CAP_SYS_ADMIN}))
        arch = S.AUDIT_ARCH[abi]
        assert emulate(prog, nr_of(abi, "mount"), arch) == ALLOW, abi
        assert emulate(prog, nr_of(abi, "unshare"), arch, (0x10000000,)) == ALLOW, abi
        assert emulate(prog, nr_of(abi, "keyctl"), arch) == EPERM, abi
        assert emulate(prog, nr_of(abi, "ioctl"), arch, (0, 0x5412)) == EPERM, abi


# --- the numbers: libseccomp's tables (what crun and runc build with) and the kernel headers ----------------

SCMP_ARCH = {"x86_64": 0xC000003E, "x32": 0x4000003E, "i386": 0x40000003, "aarch64": 0xC00000B7,
             "arm": 0x40000028}
# every name the filter looks up somewhere, plus the 32-bit-only ones
FILTER_NAMES = sorted(set(S.ALWAYS_DENIED) | {n for names, _ in S.CAP_GATED for n in names}
                      | {"ioctl", "personality", "clone", "clone3", "unshare"})


@pytest.fixture(scope="module")
def libseccomp():
    import ctypes
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError as e:
        missing(f"libseccomp.so.2 ({e})", "apt-get install libseccomp2")
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    return lib


@pytest.mark.parametrize("abi", list(SCMP_ARCH))
def test_tables_match_libseccomp(libseccomp, abi):
    """Each number is libseccomp's for that ABI, and every name libseccomp knows in that ABI is in the table
    (a missing one would be allowed). libseccomp 2.5 does not know the newest calls (-1): those are >= 424,
    numbered alike in every ABI, and checked against the kernel headers below."""
    table = S.SYSCALLS[abi]
    unknown = []
    for name in FILTER_NAMES:
        nr = libseccomp.seccomp_syscall_resolve_name_arch(SCMP_ARCH[abi], name.encode())
        if nr == -1:
            unknown.append(name)
            assert table.get(name, 424) >= 424, (abi, name)
        elif nr < 0:                                   # a pseudo number: no such call in this ABI
            assert name not in table, (abi, name, "libseccomp: not in this ABI")
        else:
            assert nr_of(abi, name) == nr, (abi, name, nr_of(abi, name), nr)
    assert set(unknown) <= {"open_tree_attr"}, unknown


def _header(path, pattern):
    import re
    if not os.path.exists(path):
        missing(f"{path}", "apt-get install linux-libc-dev")
    return {m.group(1): int(m.group(2)) for m in re.finditer(pattern, open(path).read())}


def test_tables_match_the_kernel_headers():
    x32 = S.X32_SYSCALL_BIT
    inc = "/usr/include/x86_64-linux-gnu/asm"
    headers = {
        "aarch64": {n: v for n, v in _header("/usr/include/asm-generic/unistd.h",
                                             r"#define __NR(?:3264)?_(\w+)\s+(\d+)").items()
                    if not 403 <= v <= 423},                    # the time64 calls of 32-bit ABIs only
        "x86_64": _header(f"{inc}/unistd_64.h", r"#define __NR_(\w+)\s+(\d+)"),
        "i386": _header(f"{inc}/unistd_32.h", r"#define __NR_(\w+)\s+(\d+)"),
        "x32": {n: x32 + v for n, v in _header(f"{inc}/unistd_x32.h",
                                               r"#define __NR_(\w+) \(__X32_SYSCALL_BIT \+ (\d+)\)").items()},
    }
    for abi, nrs in headers.items():
        for name in FILTER_NAMES:
            if name in nrs:
                assert nr_of(abi, name) == nrs[name], (abi, name, nr_of(abi, name), nrs[name])
            elif name in S.SYSCALLS[abi] and S.SYSCALLS[abi][name] < 424:
                pytest.fail(f"{abi}: {name} is in the table but not in the kernel's header")
    assert max(v - x32 for v in headers["x32"].values()) == S.X32_OWN_LAST
    assert max(headers["x86_64"].values()) <= S.LAST_KNOWN_NR


def test_program_is_cheap_to_build_and_import():
    t = time.perf_counter()
    for _ in range(100):
        S.pack(S.build("x86_64"))
    per = (time.perf_counter() - t) / 100
    assert per < 0.001, f"building the filter takes {per * 1000:.2f} ms"
    # init.py's _preload has imported struct, errors and caps already; the second run uses the .pyc
    code = ("import time,sys; sys.path.insert(0, %r); import struct, runtime.errors, runtime.caps; "
            "t=time.perf_counter(); import runtime.seccomp; print(time.perf_counter()-t)") % str(REPO)
    cost = min(float(subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(3))
    assert cost < 0.002, f"importing runtime.seccomp costs {cost * 1000:.2f} ms"
    for machine in S.ABIS:
        assert len(S.build(machine)) < 100 * len(S.ABIS[machine]), machine
