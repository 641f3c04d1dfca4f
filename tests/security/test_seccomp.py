"""The default seccomp filter (runtime/seccomp.py): each blocked call fails with EPERM inside a container and
does not with --security-opt seccomp=unconfined where the kernel itself allows it; the architecture check;
the program itself, checked instruction by instruction with a small BPF interpreter for both x86_64 and
aarch64 (the Pis), so that the aarch64 table is exercised on this x86_64 machine too."""
import os
import struct
import subprocess
import sys
import time

import pytest

from conftest import REPO, run
from runtime import seccomp as S
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


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x32 and i386 exist on x86_64 only")
@pytest.mark.parametrize("abi", ["x32", "i386"])
def test_foreign_abi_syscalls_kill_the_process(probe, abi):
    r = run_probe(probe, [abi])
    assert r.returncode == 128 + 31, (abi, r.returncode, r.stdout, r.stderr)    # SIGSYS
    r = run_probe(probe, [abi], opts=UNCONFINED)
    assert r.returncode == 0, (abi, r.stdout, r.stderr)


# --- the program itself -----------------------------------------------------------------------------------

def emulate(prog, nr, arch, args=(0, 0, 0, 0, 0, 0)):
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == S.BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == S.BPF_RET_K:
            return k
        else:
            hit = {S.BPF_JEQ_K: acc == k, S.BPF_JGT_K: acc > k, S.BPF_JSET_K: bool(acc & k)}[code]
            assert jt >= 0 and jf >= 0
            pc += 1 + (jt if hit else jf)


EPERM, ENOSYS = S.SECCOMP_RET_ERRNO | 1, S.SECCOMP_RET_ERRNO | 38
ALLOW, KILL = S.SECCOMP_RET_ALLOW, S.SECCOMP_RET_KILL_PROCESS


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_program_verdicts(machine):
    prog = S.build(machine)
    t = S.SYSCALLS[machine]
    arch = S.ARCHES[machine]
    other = S.AUDIT_ARCH_AARCH64 if machine == "x86_64" else S.AUDIT_ARCH_X86_64
    assert emulate(prog, t["keyctl"], other) == KILL
    assert emulate(prog, t["keyctl"], 0x40000003) == KILL                       # i386 / any 32-bit ABI
    for name in S.ALWAYS_DENIED:
        if name in t:
            assert emulate(prog, t[name], arch) == EPERM, name
    for name in ("mount", "umount2", "pivot_root", "setns", "fsopen", "open_tree", "bpf", "perf_event_open"):
        assert emulate(prog, t[name], arch) == EPERM, name
    read_nr = {"x86_64": 0, "aarch64": 63}[machine]
    assert emulate(prog, read_nr, arch) == ALLOW
    assert emulate(prog, t["ioctl"], arch, (1, 0x5412)) == EPERM
    assert emulate(prog, t["ioctl"], arch, (1, (1 << 32) | 0x5412)) == EPERM
    assert emulate(prog, t["ioctl"], arch, (1, 0x541C)) == EPERM
    assert emulate(prog, t["ioctl"], arch, (1, 0x5413)) == ALLOW                 # TIOCGWINSZ
    assert emulate(prog, t["clone"], arch, (0x10000000 | 17,)) == EPERM
    assert emulate(prog, t["clone"], arch, (0x003D0F00,)) == ALLOW               # a pthread_create
    assert emulate(prog, t["unshare"], arch, (0x80,)) == EPERM                   # CLONE_NEWTIME
    assert emulate(prog, t["unshare"], arch, (0x200,)) == ALLOW                  # CLONE_FS
    assert emulate(prog, t["clone3"], arch) == ENOSYS
    assert emulate(prog, t["personality"], arch, (0xFFFFFFFF,)) == ALLOW
    assert emulate(prog, t["personality"], arch, (0x0040000,)) == EPERM
    assert emulate(prog, 470, arch) == ENOSYS
    if machine == "x86_64":
        assert emulate(prog, 0x40000000 | 39, arch) == KILL


def test_cap_sys_admin_program_allows_mount_but_still_blocks_keys():
    for machine in ("x86_64", "aarch64"):
        t = S.SYSCALLS[machine]
        prog = S.build(machine, frozenset({S.CAP_SYS_ADMIN}))
        arch = S.ARCHES[machine]
        assert emulate(prog, t["mount"], arch) == ALLOW
        assert emulate(prog, t["unshare"], arch, (0x10000000,)) == ALLOW
        assert emulate(prog, t["keyctl"], arch) == EPERM
        assert emulate(prog, t["ioctl"], arch, (0, 0x5412)) == EPERM


def test_aarch64_table_matches_the_generic_syscall_header():
    """aarch64 uses asm-generic/unistd.h: check our numbers against the header on this machine."""
    import re
    path = "/usr/include/asm-generic/unistd.h"
    assert os.path.exists(path), "prerequisite missing: linux-libc-dev (asm-generic/unistd.h)"
    text = open(path).read()
    nrs = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR(?:3264)?_(\w+) (\d+)", text)}
    for name, nr in S.SYSCALLS["aarch64"].items():
        if name in nrs:
            assert nrs[name] == nr, (name, nr, nrs[name])
    x86 = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
    if os.path.exists(x86):
        nrs = {m.group(1): int(m.group(2)) for m in re.finditer(r"#define __NR_(\w+) (\d+)", open(x86).read())}
        for name, nr in S.SYSCALLS["x86_64"].items():
            if name in nrs:
                assert nrs[name] == nr, (name, nr, nrs[name])


def test_program_is_cheap_to_build_and_import():
    t = time.perf_counter()
    for _ in range(100):
        S.pack(S.build("aarch64"))
    per = (time.perf_counter() - t) / 100
    assert per < 0.001, f"building the filter takes {per * 1000:.2f} ms"
    # init.py's _preload has imported struct, errors and caps already; the second run uses the .pyc
    code = ("import time,sys; sys.path.insert(0, %r); import struct, runtime.errors, runtime.caps; "
            "t=time.perf_counter(); import runtime.seccomp; print(time.perf_counter()-t)") % str(REPO)
    cost = min(float(subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(3))
    assert cost < 0.002, f"importing runtime.seccomp costs {cost * 1000:.2f} ms"
    assert len(S._DEFAULT) // 8 < 120
