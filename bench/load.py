#!/usr/bin/env python3
"""Load benchmark: N containers in sequence (default 500) and M at once (default 50), as the container user;
prints the time per container (mean, median, p95, max, against `python3 -I -c pass`) and checks that the
host's process count (of that user), mount table, our open fds and the user's temp files end where they began.

    python3 bench/load.py [-n 500] [-p 50] [--net none] [--user pirun] [--rootfs DIR]
"""
import argparse
import os
import pwd
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "runtime", "run.py")


def user_kwargs(user):
    pw = pwd.getpwnam(user)
    kw = {"env": {"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir, "LANG": "C.UTF-8"}, "cwd": "/"}
    if os.getuid() == 0:
        kw.update(user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
    return kw, pw.pw_uid


def user_procs(uid):
    n = 0
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if os.stat(f"/proc/{e}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def mounts():
    with open("/proc/self/mountinfo") as f:
        return sorted(" ".join(line.split()[3:]) for line in f)


def temp_files(uid):
    out = set()
    for d in ("/tmp", "/var/tmp", "/dev/shm", f"/run/user/{uid}"):
        try:
            for n in os.listdir(d):
                try:
                    if os.lstat(f"{d}/{n}").st_uid == uid:
                        out.add(f"{d}/{n}")
                except OSError:
                    pass
        except OSError:
            pass
    return out


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("-p", type=int, default=50)
    ap.add_argument("--net", default="none")
    ap.add_argument("--user", default=os.environ.get("PIRUN_TEST_USER", "pirun"))
    ap.add_argument("--rootfs", default=os.path.join(REPO, "rootfs_host"))
    args = ap.parse_args()
    kw, uid = user_kwargs(args.user)
    base = [RUN, "--net", args.net, "--rootfs", args.rootfs]

    before = (user_procs(uid), mounts(), sorted(os.listdir("/proc/self/fd")), temp_files(uid))

    floor = []
    for _ in range(20):
        t = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-I", "-c", "pass"], check=True, **kw)
        floor.append(time.perf_counter() - t)

    times, failures = [], 0
    t_all = time.perf_counter()
    for i in range(args.n):
        t = time.perf_counter()
        r = subprocess.run(base + ["/bin/sh", "-c", f"exit {i % 7}"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
        times.append(time.perf_counter() - t)
        if r.returncode != i % 7:
            failures += 1
            print(f"run {i}: exit {r.returncode}: {r.stderr.decode(errors='replace').strip()}", file=sys.stderr)
    seq_wall = time.perf_counter() - t_all

    t = time.perf_counter()
    procs = [subprocess.Popen(base + ["/bin/sh", "-c", f"sleep 1; exit {i % 100}"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw) for i in range(args.p)]
    par_bad = 0
    for i, p in enumerate(procs):
        err = p.stderr.read().decode(errors="replace").strip()
        p.wait()
        p.stderr.close()
        if p.returncode != i % 100:
            par_bad += 1
            print(f"parallel run {i}: exit {p.returncode}: {err}", file=sys.stderr)
    par_wall = time.perf_counter() - t

    time.sleep(0.5)
    after = (user_procs(uid), mounts(), sorted(os.listdir("/proc/self/fd")), temp_files(uid))
    ms = [x * 1000 for x in times]
    print(f"pirun load benchmark (--net {args.net}, {os.cpu_count()} CPUs, {os.uname().machine})")
    print(f"{'measure':<40}{'value':>12}")
    print(f"{'python3 -I -c pass, median (ms)':<40}{statistics.median(floor) * 1000:>12.1f}")
    print(f"{f'{args.n} in sequence: mean per container (ms)':<40}{statistics.mean(ms):>12.1f}")
    print(f"{'  median (ms)':<40}{statistics.median(ms):>12.1f}")
    print(f"{'  p95 (ms)':<40}{pct(ms, 95):>12.1f}")
    print(f"{'  max (ms)':<40}{max(ms):>12.1f}")
    print(f"{'  wall (s)':<40}{seq_wall:>12.1f}")
    print(f"{'  wrong exit status':<40}{failures:>12}")
    print(f"{f'{args.p} at once (sleep 1): wall (s)':<40}{par_wall:>12.2f}")
    print(f"{'  wrong exit status':<40}{par_bad:>12}")
    names = ("processes of the user", "mount table", "our fds", "user's temp files")
    ok = True
    for name, b, a in zip(names, before, after):
        same = a == b if name != "user's temp files" else not (a - b)
        ok &= same
        shown = f"{b} -> {a}" if isinstance(b, int) else ("unchanged" if same else "CHANGED")
        print(f"{'  ' + name:<40}{shown:>12}")
    print("note: the user's process count also moves with other users of the account running at the same time")
    return 0 if ok and not failures and not par_bad else 1


if __name__ == "__main__":
    sys.exit(main())
