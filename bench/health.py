#!/usr/bin/env python3
"""The cost of one health check, against baselines measured in the same run.

    python3 bench/health.py [--rounds 30] [--rootfs DIR] [--user pirun]

A detached `sleep` container (--net none) with a check `true` that its monitor never schedules
(--health-interval disable). Interleaved rounds of:
  check      what the monitor does per check: fork a process that runs the check inside the container as
             `pirun exec` does (runtime.lifecycle.health.spawn) and read its result; wall time and CPU time of
             this process and its children (getrusage), the state record's update included
  exec       `pirun exec NAME true` (a whole pirun command: interpreter start-up included)
  run.py     `run.py --net none /bin/true`
When run as root it re-runs itself as the unprivileged user. The container is removed at the end.
"""
import argparse
import marshal
import os
import pwd
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
RUN = os.path.join(REPO, "runtime", "run.py")
PIRUN = os.path.join(REPO, "runtime", "pirun")


def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn):
    c0, t0 = cpu(), time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000, (cpu() - c0) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--rootfs", default=os.path.join(REPO, "rootfs_host"))
    ap.add_argument("--user", default=os.environ.get("PIRUN_TEST_USER", "pirun"))
    args = ap.parse_args()
    if os.getuid() == 0:
        os.execv("/usr/sbin/runuser", ["runuser", "-u", args.user, "--", sys.executable, os.path.abspath(__file__),
                                       "--rounds", str(args.rounds), "--rootfs", args.rootfs])
    from runtime.cmd import Context
    from runtime.lifecycle import health, state
    base = tempfile.mkdtemp(prefix="pirun-bench-health-")
    ctx = Context(root=f"{base}/root", runroot=f"{base}/run")
    g = ["--root", ctx.root, "--runroot", ctx.runroot]
    subprocess.run([PIRUN, *g, "run", "-d", "--name", "b", "--net", "none", "--rootfs", args.rootfs,
                    "--health-cmd", "true", "--health-interval", "disable", "sleep", "600"],
                   check=True, capture_output=True)
    try:
        c = state.lookup(ctx, "b")
        hc = c.config["healthcheck"]
        r, w = os.pipe2(os.O_CLOEXEC)

        def check():
            pid = health.spawn(ctx, c.id, hc, w)
            result = marshal.loads(os.read(r, 65536))
            os.waitpid(pid, 0)
            assert result["ExitCode"] == 0, result
            health.record(c, hc, result)

        devnull = subprocess.DEVNULL
        cases = {"check": check,
                 "exec": lambda: subprocess.run([PIRUN, *g, "exec", "b", "true"], check=True, stdout=devnull),
                 "run.py": lambda: subprocess.run([sys.executable, RUN, "--net", "none", "--rootfs", args.rootfs,
                                                   "/bin/true"], check=True, stdout=devnull)}
        for fn in cases.values():
            fn()
        times = {k: ([], []) for k in cases}
        for _ in range(args.rounds):
            for k, fn in cases.items():
                wall, used = timed(fn)
                times[k][0].append(wall)
                times[k][1].append(used)
    finally:
        subprocess.run([PIRUN, *g, "rm", "-f", "-a"], capture_output=True)
        subprocess.run(["rm", "-rf", base])
    print(f"bench/health.py: {args.rounds} interleaved rounds, {time.strftime('%Y-%m-%d')}, "
          f"load {os.getloadavg()[0]:.1f}")
    base_wall = statistics.median(times["run.py"][0])
    for k, (wall, used) in times.items():
        print(f"  {k:8s} median wall {statistics.median(wall):6.1f} ms  CPU {statistics.median(used):6.1f} ms  "
              f"(wall {statistics.median(wall) / base_wall:.2f} x run.py)")


if __name__ == "__main__":
    main()
