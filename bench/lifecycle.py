#!/usr/bin/env python3
"""Long-running containers: exec latency, ps with 50 containers, and the memory of a detached container's
monitor, each against a baseline measured in the same run.

    python3 bench/lifecycle.py [--rounds 30] [--rootfs DIR] [--user pirun] [--no-podman]

1. `pirun exec NAME true` against `run.py --net none /bin/true` (interleaved rounds; target: exec at most
   run.py's own cost) and `python3 -I -c pass` (the interpreter floor).
2. `pirun ps` and `pirun ps -a --format json` with 50 detached containers (target: under 100 ms).
3. PSS (/proc/PID/smaps_rollup) of a detached `sleep` container with the default network: pirun's monitor,
   its intermediate process and slirp4netns (target: 12 MB), against podman's conmon + slirp4netns for the
   same rootfs (`podman --runtime runc run -d --rootfs DIR`; crun refuses hybrid cgroup hosts).
When run as root it re-runs itself as the unprivileged user. Every container it starts is removed.
"""
import argparse
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "runtime", "run.py")
PIRUN = os.path.join(REPO, "runtime", "pirun")
PSS_TARGET_KB = 12 * 1024

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import spawn_wait  # noqa: E402  (one way of timing a command for every bench)


def interleaved(commands, rounds):
    times = {name: [] for name in commands}
    for argv in commands.values():
        spawn_wait(argv)
    for _ in range(rounds):
        for name, argv in commands.items():
            times[name].append(spawn_wait(argv))
    return times


def table(times):
    print("| command | median ms | p90 ms |")
    print("|---|---:|---:|")
    for k, v in times.items():
        print(f"| `{k}` | {statistics.median(v):.1f} | {statistics.quantiles(v, n=10)[-1]:.1f} |")


def pss_kb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def children(pid):
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(e))
            except (OSError, ValueError):
                pass
    return out


def comm(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--rootfs", default=os.path.join(REPO, "rootfs_host"))
    ap.add_argument("--user", default=os.environ.get("PIRUN_TEST_USER", "pirun"))
    ap.add_argument("--no-podman", action="store_true")
    args = ap.parse_args()
    if os.getuid() == 0:
        # byte-compile as scripts/test does: the user cannot write __pycache__ in a root-owned checkout
        subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", os.path.join(REPO, "runtime")],
                       stdout=subprocess.DEVNULL, check=True)
        os.execv("/usr/sbin/runuser", ["runuser", "-u", args.user, "--", "/usr/bin/python3",
                                        os.path.abspath(__file__), "--rounds", str(args.rounds), "--rootfs",
                                        args.rootfs] + (["--no-podman"] if args.no_podman else []))
    base = tempfile.mkdtemp(prefix="pirun-bench-lc-")
    pirun = [PIRUN, "--root", f"{base}/root", "--runroot", f"{base}/run"]

    def p(*a, check=True):
        return subprocess.run(pirun + list(a), capture_output=True, text=True, check=check, cwd="/")

    print(f"long-running containers, {os.uname().machine}, {time.strftime('%Y-%m-%d')}, "
          f"user {pwd.getpwuid(os.getuid()).pw_name}, {args.rounds} interleaved rounds, load "
          f"{os.getloadavg()[0]:.1f}")
    try:
        p("run", "-d", "--name", "bench-exec", "--net", "none", "--rootfs", args.rootfs, "sleep", "3600")
        times = interleaved({
            "python3 -I -c pass": ["/usr/bin/python3", "-I", "-c", "pass"],
            "run.py --net none /bin/true": [RUN, "--net", "none", "--rootfs", args.rootfs, "/bin/true"],
            "pirun exec NAME true": pirun + ["exec", "bench-exec", "true"],
        }, args.rounds)
        print("\n1. exec")
        table(times)
        med = {k: statistics.median(v) for k, v in times.items()}
        floor = med["python3 -I -c pass"]
        run_cost, exec_cost = med["run.py --net none /bin/true"], med["pirun exec NAME true"]
        print(f"exec / run.py: {exec_cost / run_cost:.2f} (wall); over the interpreter floor: exec "
              f"{exec_cost - floor:+.1f} ms, run.py {run_cost - floor:+.1f} ms "
              f"(target exec <= run.py: {'met' if exec_cost <= run_cost else 'MISSED'})")

        for i in range(49):
            p("run", "-d", "--name", f"bench-{i:02d}", "--net", "none", "--rootfs", args.rootfs, "sleep", "3600")
        n = len(json.loads(p("ps", "--format", "json").stdout))
        times = interleaved({
            "python3 -I -c pass": ["/usr/bin/python3", "-I", "-c", "pass"],
            f"pirun ps ({n} running)": pirun + ["ps"],
            f"pirun ps -a --format json ({n})": pirun + ["ps", "-a", "--format", "json"],
        }, args.rounds)
        print("\n2. ps")
        table(times)
        ps_med = statistics.median(times[f"pirun ps ({n} running)"])
        print(f"pirun ps with {n} containers: {ps_med:.1f} ms (target < 100 ms: "
              f"{'met' if ps_med < 100 else 'MISSED'})")
        p("rm", "-f", "-a")

        print("\n3. memory of a detached container (slirp4netns), PSS in MB")
        p("run", "-d", "--name", "bench-mem", "--rootfs", args.rootfs, "sleep", "3600")
        time.sleep(1.0)
        mon = json.loads(p("inspect", "bench-mem").stdout)[0]["State"]["ConmonPid"]
        parts = {"pirun-monitor": pss_kb(mon)}
        for c in children(mon):
            parts[comm(c)] = parts.get(comm(c), 0) + pss_kb(c)
        total = sum(parts.values())
        print("| process | PSS MB |")
        print("|---|---:|")
        for k, v in parts.items():
            print(f"| {k} | {v / 1024:.1f} |")
        print(f"| pirun total | {total / 1024:.1f} |")
        if not args.no_podman and shutil.which("podman"):
            podman = ["podman", "--runtime", "runc"]
            subprocess.run(podman + ["rm", "-f", "-t", "0", "pirun-bench"], capture_output=True)
            before = set(_pids_named("slirp4netns"))
            r = subprocess.run(podman + ["run", "-d", "--name", "pirun-bench", "--rootfs", args.rootfs, "sleep",
                                         "3600"], capture_output=True, text=True, cwd="/")
            if r.returncode:
                print(f"podman: {r.stderr.strip().splitlines()[-1]}")
            else:
                time.sleep(1.0)
                pid = json.loads(subprocess.run(podman + ["inspect", "pirun-bench"], capture_output=True,
                                                text=True).stdout)[0]["State"]["ConmonPid"]
                pp = {"conmon": pss_kb(pid)}
                for helper in set(_pids_named("slirp4netns")) - before:      # the one this container got
                    pp["slirp4netns"] = pss_kb(helper)
                for k, v in pp.items():
                    print(f"| podman {k} | {v / 1024:.1f} |")
                ptotal = sum(pp.values())
                print(f"| podman total | {ptotal / 1024:.1f} |")
                print(f"pirun / podman: {total / ptotal:.2f}")
                subprocess.run(podman + ["rm", "-f", "-t", "0", "pirun-bench"], capture_output=True)
        print(f"pirun monitor + helper: {total / 1024:.1f} MB PSS (target <= 12 MB: "
              f"{'met' if total <= PSS_TARGET_KB else 'MISSED'})")
        p("rm", "-f", "-a")

        print("\n4. start of a detached container (`run -d ... true` until it returns; rm between rounds)")
        starts = {"pirun run -d --net none": [], "pirun run -d (slirp4netns)": []}
        podman = ["podman", "--runtime", "runc"]
        use_podman = not args.no_podman and shutil.which("podman")
        if use_podman:
            starts["podman run -d --network none"] = []
            starts["podman run -d (slirp4netns)"] = []
        for i in range(max(5, args.rounds // 3)):
            for k in starts:
                net = ["--net", "none"] if "pirun" in k and "none" in k else []
                if k.startswith("pirun"):
                    argv = pirun + ["run", "-d", "--name", "bench-start", *net, "--rootfs", args.rootfs, "true"]
                    starts[k].append(spawn_wait(argv))
                    p("rm", "-f", "bench-start")
                else:
                    net = ["--network", "none"] if "none" in k else []
                    argv = [shutil.which("podman"), "--runtime", "runc", "run", "-d", "--name", "pirun-bench-start",
                            *net, "--rootfs", args.rootfs, "true"]
                    starts[k].append(spawn_wait(argv))
                    subprocess.run(podman + ["rm", "-f", "-t", "0", "pirun-bench-start"], capture_output=True)
        table(starts)
    finally:
        subprocess.run(pirun + ["rm", "-f", "-a"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _pids_named(name):
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if comm(int(e)) == name:
                    out.append(int(e))
            except OSError:
                pass
    return out


if __name__ == "__main__":
    main()
