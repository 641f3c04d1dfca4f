#!/usr/bin/env python3
"""Start-up latency of `run.py --net none /bin/true`, against baselines measured in the same run.

    python3 bench/startup.py [--rounds 40] [--rootfs DIR] [--user pirun]

Rounds interleave the commands so that machine noise hits all of them alike. Reported: median and p90 wall
time per command, and run.py's cost over `python3 -I -c pass` (the interpreter floor) and over util-linux
`unshare -Urmpif --mount-proc --root ROOTFS /bin/true` (the same namespaces, no Python). Target (issue 2):
at most 25 ms over `python3 -I -c pass`. When run as root it re-runs itself as the unprivileged user.
"""
import argparse
import os
import pwd
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(REPO, "runtime", "run.py")
TARGET_MS = 25.0


def spawn_wait(argv):
    devnull = os.open(os.devnull, os.O_RDWR)
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                                  (os.POSIX_SPAWN_DUP2, devnull, 1)])
    _, status = os.waitpid(pid, 0)
    dt = time.perf_counter() - t0
    os.close(devnull)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"bench: {' '.join(argv)} exited {code}")
    return dt * 1000


def measure(commands, rounds):
    times = {name: [] for name in commands}
    for name, argv in commands.items():          # warm caches
        spawn_wait(argv)
    for _ in range(rounds):
        for name, argv in commands.items():
            times[name].append(spawn_wait(argv))
    return times


def commands(rootfs, python="/usr/bin/python3"):
    """The measured commands by name: the interpreter floor, the same namespaces without Python, run.py."""
    return {
        "python3 -I -c pass": [python, "-I", "-c", "pass"],
        "unshare -Urmpif --mount-proc --root": ["/usr/bin/unshare", "-Urmpif", "--mount-proc", f"--root={rootfs}",
                                                "/bin/true"],
        "run.py --net none /bin/true": [RUN, "--net", "none", "--rootfs", rootfs, "/bin/true"],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--rootfs", default=os.path.join(REPO, "rootfs_host"))
    ap.add_argument("--user", default=os.environ.get("PIRUN_TEST_USER", "pirun"))
    ap.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    args = ap.parse_args()
    if os.getuid() == 0:
        pw = pwd.getpwnam(args.user)
        os.execv("/usr/sbin/runuser", ["runuser", "-u", args.user, "--", sys.executable, os.path.abspath(__file__),
                                        "--rounds", str(args.rounds), "--rootfs", args.rootfs]
                 + (["--check"] if args.check else []))
    times = measure(commands(args.rootfs), args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"start-up latency, {args.rounds} interleaved rounds, {os.uname().machine}, "
          f"{time.strftime('%Y-%m-%d')}, user {pwd.getpwuid(os.getuid()).pw_name}")
    print(f"| command | median ms | p90 ms |")
    print(f"|---|---:|---:|")
    for k, v in times.items():
        p90 = statistics.quantiles(v, n=10)[-1]
        print(f"| `{k}` | {med[k]:.1f} | {p90:.1f} |")
    over = med["run.py --net none /bin/true"] - med["python3 -I -c pass"]
    over_unshare = med["run.py --net none /bin/true"] - med["unshare -Urmpif --mount-proc --root"]
    print(f"run.py over python3 -c pass: {over:+.1f} ms (target <= {TARGET_MS:.0f} ms: "
          f"{'met' if over <= TARGET_MS else 'MISSED'}); over unshare: {over_unshare:+.1f} ms")
    if args.check and over > TARGET_MS:
        sys.exit(1)


if __name__ == "__main__":
    main()
