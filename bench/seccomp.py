#!/usr/bin/env python3
"""What the default seccomp filter costs a container start, and what the libseccomp ways would cost.

    python3 bench/seccomp.py [--rounds 200] [--starts 40] [--user pirun]

1. The install alone, each variant in a freshly forked child with no_new_privs set (as init.py's process C
   is when it installs the filter), rounds interleaved, median and p90:
   * pirun: `import runtime.seccomp` (the program for every ABI is built at import) + `install()`; and
     `install()` alone, the module imported before (as process I does, while the launcher writes the ID maps)
   * any filter: a one-instruction program through the same ctypes path (the floor of every variant)
   * libseccomp, built per start: dlopen libseccomp.so.2, seccomp_init(ALLOW), the compat architectures,
     the same deny rules (as far as libseccomp 2.5 can express them: no ceiling for unknown numbers, no
     personality rule, no calls it does not know), seccomp_load
   * libseccomp, exported once: read the BPF exported by seccomp_export_bpf from a file, load it with prctl
2. End to end: `run.py --net none /bin/true` with the default filter against `--security-opt
   seccomp=unconfined`, interleaved (the difference is everything the filter costs, kernel side included).

As root it re-runs itself as the unprivileged user.
"""
import argparse
import ctypes
import os
import pwd
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RUN = os.path.join(REPO, "runtime", "run.py")

from runtime import caps, errors, libc  # noqa: E402,F401  (imported in C before the filter module)

libc._load()
SCMP_ARCHES = {"x86_64": (0x40000003, 0x4000003E), "aarch64": (0x40000028,)}     # compat arches added


def _libseccomp_rules(lib, ctx):
    from runtime import seccomp as S

    class Cmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    masked_eq = 7
    eperm, enosys = S.SECCOMP_RET_ERRNO | 1, S.SECCOMP_RET_ERRNO | 38
    kept = S._DEFAULT_CAPS
    names = list(S.ALWAYS_DENIED)
    for group, needed in S.CAP_GATED:
        if not any(c in kept for c in needed):
            names += group
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr != -1:
            lib.seccomp_rule_add_array(ctx, eperm, nr, 0, None)
    for name in ("clone", "unshare"):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        for bit in range(32):
            if S.NS_FLAGS & (1 << bit):
                c = Cmp(0, masked_eq, 1 << bit, 1 << bit)
                lib.seccomp_rule_add_array(ctx, eperm, nr, 1, ctypes.byref(c))
    nr = lib.seccomp_syscall_resolve_name(b"ioctl")
    for req in (S.TIOCSTI, S.TIOCLINUX):
        c = Cmp(1, masked_eq, 0xFFFFFFFF, req)
        lib.seccomp_rule_add_array(ctx, eperm, nr, 1, ctypes.byref(c))
    lib.seccomp_rule_add_array(ctx, enosys, lib.seccomp_syscall_resolve_name(b"clone3"), 0, None)


def _libseccomp():
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.c_void_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    ctx = lib.seccomp_init(0x7FFF0000)
    for arch in SCMP_ARCHES[os.uname().machine]:
        lib.seccomp_arch_add(ctx, arch)
    _libseccomp_rules(lib, ctx)
    return lib, ctx


def _pirun_install(seccomp):
    """What install() does in C, whose bounding set holds only the default capabilities (this process keeps
    them all, which would make install() build the program for another set)."""
    seccomp._kept_caps(libc._lib)
    seccomp.load(seccomp._DEFAULT)


def variant_pirun(_blob):
    from runtime import seccomp
    _pirun_install(seccomp)


def variant_libseccomp(_blob):
    lib, ctx = _libseccomp()
    if lib.seccomp_load(ctx) != 0:
        raise OSError("seccomp_load failed")


def _load(code):
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = ctypes.create_string_buffer(__import__("struct").pack("HP", len(code) // 8, ctypes.addressof(buf)))
    libc.check(libc._lib.prctl(22, 2, ctypes.addressof(fprog), 0, 0), "load a filter")


def variant_exported(blob):
    with open(blob, "rb") as f:
        _load(f.read())


def variant_floor(_blob):
    _load(b"\x06\x00\x00\x00\x00\x00\xff\x7f")          # one instruction: RET ALLOW


def variant_pirun_install(_blob):
    _pirun_install(sys.modules["runtime.seccomp"])


def export(path):
    lib, ctx = _libseccomp()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if lib.seccomp_export_bpf(ctx, fd) != 0:
            raise OSError("seccomp_export_bpf failed")
    finally:
        os.close(fd)
    # the pirun variant imports the module in the child, as C would without process I's head start
    import runtime
    sys.modules.pop("runtime.seccomp", None)
    del runtime.seccomp


def in_child(fn, blob):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
            libc.set_name("bench")          # C has used ctypes before: its first-use page faults are not ours
            if fn is variant_pirun_install:
                from runtime import seccomp  # noqa: F401
            t0, c0 = time.perf_counter(), time.process_time()
            fn(blob)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            with open("/proc/self/status") as f:
                if "Seccomp:\t2" not in f.read():
                    raise OSError("no filter installed")
            os.write(w, f"{dt * 1000:.6f} {cpu * 1000:.6f}".encode())
        except BaseException as e:          # noqa: BLE001
            os.write(w, f"error {e}".encode())
            code = 1
        os._exit(code)
    os.close(w)
    out = os.read(r, 200).decode()
    os.close(r)
    os.waitpid(pid, 0)
    if out.startswith("error"):
        sys.exit(f"bench: {fn.__name__}: {out}")
    wall, cpu = out.split()
    return float(wall), float(cpu)


def spawn_wait(argv):
    devnull = os.open(os.devnull, os.O_RDWR)
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                                  (os.POSIX_SPAWN_DUP2, devnull, 1)])
    _, status, ru = os.wait4(pid, 0)
    dt = time.perf_counter() - t0
    os.close(devnull)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench: {' '.join(argv)} failed")
    return dt * 1000, (ru.ru_utime + ru.ru_stime) * 1000


def stats(xs):
    xs = sorted(xs)
    return statistics.median(xs), xs[int(len(xs) * 0.9)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--starts", type=int, default=40)
    ap.add_argument("--rootfs", default=os.path.join(REPO, "rootfs_host"))
    ap.add_argument("--user", default=os.environ.get("PIRUN_TEST_USER", "pirun"))
    args = ap.parse_args()
    if os.getuid() == 0:
        pwd.getpwnam(args.user)
        os.execv("/usr/sbin/runuser", ["runuser", "-u", args.user, "--", sys.executable, os.path.abspath(__file__),
                                        "--rounds", str(args.rounds), "--starts", str(args.starts),
                                        "--rootfs", args.rootfs])
    with tempfile.TemporaryDirectory(prefix="pirun-bench-seccomp-") as d:
        blob = os.path.join(d, "filter.bpf")
        export(blob)
        variants = {"any filter: one instruction, prctl (floor)": variant_floor,
                    "pirun: import (build) + install": variant_pirun,
                    "pirun: install (imported before)": variant_pirun_install,
                    "libseccomp: dlopen + rules + seccomp_load": variant_libseccomp,
                    "libseccomp exported once: read + prctl": variant_exported}
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(in_child(fn, blob))
    print(f"install in a forked child, {args.rounds} interleaved rounds ({os.uname().machine}), "
          "CPU time (wall time: other processes' load included):")
    for name, xs in times.items():
        med, p90 = stats([c for _w, c in xs])
        wmed, _ = stats([w for w, _c in xs])
        print(f"  {name:45s} median {med:6.3f} ms   p90 {p90:6.3f} ms   (wall median {wmed:6.3f} ms)")

    base = [RUN, "--net", "none", "--rootfs", args.rootfs]
    commands = {"default filter": base + ["/bin/true"],
                "seccomp=unconfined": base + ["--security-opt", "seccomp=unconfined", "/bin/true"]}
    runs = {name: [] for name in commands}
    for argv in commands.values():
        spawn_wait(argv)
    for _ in range(args.starts):
        for name, argv in commands.items():
            runs[name].append(spawn_wait(argv))
    print(f"run.py --net none /bin/true, {args.starts} interleaved rounds (CPU: run.py and every process it "
          "waited for):")
    for name, xs in runs.items():
        med, p90 = stats([w for w, _c in xs])
        cpu, _ = stats([c for _w, c in xs])
        print(f"  {name:45s} median {med:6.2f} ms   p90 {p90:6.2f} ms   CPU median {cpu:6.2f} ms")
    wall = [statistics.median([x[i] for x in runs["default filter"]])
            - statistics.median([x[i] for x in runs["seccomp=unconfined"]]) for i in (0, 1)]
    print(f"  the filter's share of a start (median differences): wall {wall[0]:+.2f} ms, CPU {wall[1]:+.2f} ms")


if __name__ == "__main__":
    main()
