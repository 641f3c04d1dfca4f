#!/usr/bin/env python3
"""Memory cost of a running container: RSS, PSS and USS of run.py (P), its supervisor I (pirun-ns) and the
network helper, while the command sleeps. Target: 16 MB together (issue 6). The command itself is not counted
(it is the user's). Read from /proc/PID/smaps_rollup; run as root (reads other users' smaps) or as the
container user.

    python3 bench/memory.py [--net none|slirp4netns|pasta] [--user pirun] [--rootfs DIR]
"""
import argparse
import os
import pwd
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "runtime", "run.py")
TARGET_KB = 16 * 1024


def rollup(pid):
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1])
    return {"rss": out.get("Rss", 0), "pss": out.get("Pss", 0),
            "uss": out.get("Private_Clean", 0) + out.get("Private_Dirty", 0)}


def children_of(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(entry))
            except (OSError, ValueError):
                pass
    return kids


def comm(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def tree(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children_of(p)
    return out


def user_kwargs(user):
    if os.getuid() != 0:
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def measure(argv, kwargs, label, settle=0.5):
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd="/", **kwargs)
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if any(comm(p) == "sleep" for p in tree(proc.pid) if os.path.exists(f"/proc/{p}")):
                break
            if proc.poll() is not None:
                raise SystemExit(f"{label}: exited early: {proc.stderr.read().strip()}")
            time.sleep(0.02)
        else:
            raise SystemExit(f"{label}: the command did not start")
        time.sleep(settle)
        rows = []
        for p in tree(proc.pid):
            name = comm(p)
            if name == "sleep":
                continue                   # the user's command
            rows.append((p, name, rollup(p)))
        return rows
    finally:
        proc.kill()
        for p in tree(proc.pid)[1:]:
            try:
                os.kill(p, 9)
            except OSError:
                pass
        proc.wait()


def container_argv(net, rootfs):
    return [RUN, "--net", net, "--rootfs", rootfs, "/bin/sleep", "60"]


def baseline_argv():
    """A bare python3 waiting for a sleeping child: the floor a Python supervisor cannot go below."""
    return [sys.executable if os.getuid() else "/usr/bin/python3", "-I", "-c",
            "import os; pid = os.fork()\nif pid == 0: os.execv('/bin/sleep', ['sleep', '60'])\n"
            "os.waitpid(pid, 0)"]


def total(rows, key="pss"):
    return sum(m[key] for _pid, _name, m in rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="none")
    ap.add_argument("--user", default=os.environ.get("PIRUN_TEST_USER", "pirun"))
    ap.add_argument("--rootfs", default=os.path.join(REPO, "rootfs_host"))
    args = ap.parse_args()
    kw = user_kwargs(args.user)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
    rows = measure(container_argv(args.net, args.rootfs), dict(kw, env=env), f"run.py --net {args.net}")
    idle = measure(baseline_argv(), dict(kw, env=env), "idle python3")
    print(f"pirun memory while the command sleeps (--net {args.net}), kB")
    print(f"{'process':<22}{'pid':>8}{'RSS':>9}{'PSS':>9}{'USS':>9}")
    tot = {"rss": 0, "pss": 0, "uss": 0}
    for pid, name, m in rows:
        print(f"{name:<22}{pid:>8}{m['rss']:>9}{m['pss']:>9}{m['uss']:>9}")
        for k in tot:
            tot[k] += m[k]
    print(f"{'total':<22}{'':>8}{tot['rss']:>9}{tot['pss']:>9}{tot['uss']:>9}")
    for pid, name, m in idle:
        print(f"{'(idle python3: ' + name + ')':<22}{pid:>8}{m['rss']:>9}{m['pss']:>9}{m['uss']:>9}")
    verdict = "within" if tot["pss"] <= TARGET_KB else "OVER"
    print(f"target {TARGET_KB} kB (PSS of run.py and helpers together): {verdict}; "
          f"RSS sum {tot['rss']} kB counts shared pages once per process")
    return 0 if tot["pss"] <= TARGET_KB else 1


if __name__ == "__main__":
    sys.exit(main())
