#!/usr/bin/python3
"""Start latency of `run.py /bin/true` per network mode, interleaved in one run.

    python3 bench/net_start.py [-n 40] [--modes none,slirp4netns,pasta] [--rootfs DIR]

Runs as the invoking user, or as $PIRUN_TEST_USER (default pirun) when started as root. Each round runs every
mode once, in a rotating order, so drift (cache, CPU frequency, other load) hits all modes alike. Prints a table
(median, p10, p90, min in ms) and the median difference of each mode against --net none. Goal: the default
network (runtime.net.DEFAULTS["foreground"]) adds at most 5 ms median.

On a host whose /dev/net/tun is 0600 root (no udev), run it through the dev shim:
    sudo python3 tests/net_helpers.py tunshim -- python3 bench/net_start.py
"""
import argparse
import os
import pwd
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "runtime" / "run.py"


def user_kwargs():
    if os.geteuid() != 0:
        return {}, dict(os.environ)
    pw = pwd.getpwnam(os.environ.get("PIRUN_TEST_USER", "pirun"))
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": pw.pw_dir, "USER": pw.pw_name,
           "LANG": "C.UTF-8"}
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}, env


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=40, help="rounds (default 40)")
    ap.add_argument("--modes", default="none,slirp4netns,pasta")
    ap.add_argument("--rootfs", default=str(REPO / "rootfs_host"))
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    modes = a.modes.split(",")
    kw, env = user_kwargs()
    times = {m: [] for m in modes}
    for i in range(a.warmup + a.n):
        order = modes[i % len(modes):] + modes[:i % len(modes)]
        for m in order:
            argv = [str(RUN), "--net", m, "--rootfs", a.rootfs, "/bin/true"]
            t0 = time.perf_counter()
            r = subprocess.run(argv, capture_output=True, text=True, env=env, **kw)
            dt = (time.perf_counter() - t0) * 1000
            if r.returncode != 0:
                sys.exit(f"net_start: --net {m}: run.py exited {r.returncode}: {r.stderr.strip()}")
            if i >= a.warmup:
                times[m].append(dt)
    base = statistics.median(times[modes[0]])
    print(f"run.py /bin/true, {a.n} rounds, {os.cpu_count()} CPUs, {os.uname().machine}, "
          f"run.py via its shebang (/usr/bin/python3 -I)")
    print(f"{'mode':<13}{'median':>9}{'p10':>9}{'p90':>9}{'min':>9}{'vs ' + modes[0]:>12}")
    for m in modes:
        xs = times[m]
        med = statistics.median(xs)
        print(f"{m:<13}{med:9.1f}{pct(xs, 10):9.1f}{pct(xs, 90):9.1f}{min(xs):9.1f}{med - base:+11.1f}ms")
    sys.path.insert(0, str(REPO))
    from runtime.net import DEFAULTS
    default = DEFAULTS["foreground"]
    if default in times and modes[0] == "none":
        extra = statistics.median(times[default]) - base
        print(f"default network ({default}) adds {extra:+.1f} ms median: "
              f"{'within' if extra <= 5 else 'OVER'} the 5 ms goal")


if __name__ == "__main__":
    main()
