#!/usr/bin/python3
"""Network backends against host loopback in one run: TCP throughput through -p (both directions), start
latency over --net none, and the helper's memory (PSS).

    python3 bench/net_iperf.py [-t 2] [-n 3] [--starts 15] [--rootfs DIR] [--rows loopback,slirp4netns,...]

Rows (interleaved, -n rounds each, so load from other work on the machine hits every row alike):
  loopback          iperf3 -s on the host's 127.0.0.1: the machine's limit, the baseline of every ratio
  slirp4netns       the default: slirp4netns, MTU 65520, TCP ports through pirun's splice forwarder
  slirp4netns-api   slirp4netns forwarding TCP itself (add_hostfwd, libslirp's TCP stack), PIRUN_PORT_HANDLER
  slirp4netns-1500  as slirp4netns-api at MTU 1500 (the seeds' setting; not run unless asked for)
  pasta             passt's pasta (-t HOST:CTR, spliced on loopback)
For each row the container runs `iperf3 -s` published with `-p 127.0.0.1:PORT:5201`; the host runs
`iperf3 -c 127.0.0.1 -p PORT -t T` (host -> container) and with `-R` (container -> host). All traffic stays on
this machine. Start: `run.py --net MODE /bin/true`, --starts interleaved rounds, median against --net none.
Helper PSS: /proc/PID/smaps_rollup of every helper process of the row's container (slirp4netns and the port
forwarder, or pasta) right after its iperf3 runs, summed; pasta is not dumpable, so reading it needs root.

iperf3 in the container: Debian's iperf3 (apt-get install iperf3) is copied, with the shared libraries `ldd`
lists and the dynamic loader, into a throwaway copy of the busybox rootfs (removed at the end).

Runs containers as the invoking user, or as $PIRUN_TEST_USER (default pirun) when started as root. On a host
whose /dev/net/tun is 0600 root (no udev), run it through the dev shim:
    sudo python3 tests/net_helpers.py tunshim -- python3 bench/net_iperf.py
"""
import argparse
import json
import os
import pwd
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "runtime" / "run.py"
sys.path.insert(0, str(REPO / "tests"))
from net_helpers import free_port   # noqa: E402

# key: (--net, extra environment, label)
ROWS = {
    "loopback": (None, {}, "host loopback (baseline)"),
    "slirp4netns": ("slirp4netns", {}, "slirp4netns + splice forwarder (default)"),
    "slirp4netns-api": ("slirp4netns", {"PIRUN_PORT_HANDLER": "slirp4netns"}, "slirp4netns, libslirp forwarding"),
    "slirp4netns-1500": ("slirp4netns", {"PIRUN_PORT_HANDLER": "slirp4netns", "PIRUN_SLIRP4NETNS_MTU": "1500"},
                         "slirp4netns, libslirp, MTU 1500 (seed)"),
    "pasta": ("pasta", {}, "pasta"),
}
DEFAULT_ROWS = "loopback,slirp4netns,slirp4netns-api,pasta"
GOAL_RATIO, GOAL_START_MS, GOAL_PSS_MB = 0.60, 5.0, 8.0


def container_user():
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid()), {}
    pw = pwd.getpwnam(os.environ.get("PIRUN_TEST_USER", "pirun"))
    return pw, {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def user_env(pw, extra=()):
    return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": pw.pw_dir, "USER": pw.pw_name,
            "LANG": "C.UTF-8", **dict(extra)}


def make_rootfs(src, pw):
    """A copy of the busybox rootfs with the host's iperf3, its libraries and loader at the same paths."""
    iperf = shutil.which("iperf3")
    if not iperf:
        sys.exit("net_iperf: iperf3 not found; fix: apt-get install iperf3")
    dest = Path(tempfile.mkdtemp(prefix="pirun-iperf-rootfs-"))
    root = dest / "rootfs"
    shutil.copytree(src, root, symlinks=True)
    files = [iperf]
    for line in subprocess.run(["ldd", iperf], capture_output=True, text=True, check=True).stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                files.append(word)
    for f in files:
        target = root / f.lstrip("/")
        if target.parent.is_symlink():          # e.g. /lib -> usr/lib in a merged-/usr rootfs
            target = root / os.path.realpath(target.parent).lstrip("/") / target.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, target)               # follows symlinks: the real file under the listed name
    if os.geteuid() == 0:
        os.chmod(dest, 0o755)
        for dirpath, dirnames, filenames in os.walk(dest):
            for n in dirnames + filenames + [""]:
                os.lchown(os.path.join(dirpath, n), pw.pw_uid, pw.pw_gid)
    return dest, root


def iperf_client(port, seconds, reverse):
    argv = ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"]
    if reverse:
        argv.append("-R")
    last = None
    for _ in range(50):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        try:
            data = json.loads(r.stdout)
        except ValueError:
            data = {"error": r.stderr or r.stdout}
        if "error" not in data:
            return data["end"]["sum_received"]["bits_per_second"] / 1e9
        last = data["error"]
        time.sleep(0.2)                        # the server is not listening yet
    raise RuntimeError(f"iperf3 client failed: {last}")


def children(pid):
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(name))
    return out


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def helper_pss_kb(run_pid):
    """Summed PSS of run.py's children but the container's own process (pirun-ns); None if unreadable."""
    total = 0
    for pid in children(run_pid):
        if comm(pid) == "pirun-ns":
            continue
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            return None
    return total


def one_row(key, rootfs, pw, kw, seconds):
    """(host->ctr Gbps, ctr->host Gbps, helper PSS kB or None)"""
    net, extra_env, _ = ROWS[key]
    port = free_port()
    if net is None:                            # loopback: the same iperf3 server, on the host
        argv = ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port), "--forceflush"]
    else:
        argv = [str(RUN), "--net", net, "--rootfs", str(rootfs), "-p", f"127.0.0.1:{port}:5201",
                "/usr/bin/iperf3", "-s", "-p", "5201", "--forceflush"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=user_env(pw, extra_env), **kw)
    try:
        for line in proc.stdout:
            if "Server listening" in line:
                break
        else:
            raise RuntimeError(f"{key}: exited {proc.wait()}: {proc.stderr.read().strip()}")
        h2c = iperf_client(port, seconds, reverse=False)
        c2h = iperf_client(port, seconds, reverse=True)
        pss = helper_pss_kb(proc.pid) if net else 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    return h2c, c2h, pss


def start_times(modes, rootfs, pw, kw, rounds):
    """Median ms of `run.py --net MODE /bin/true` per mode, interleaved in rotating order (no -p: the rows of
    one mode differ only in how they publish ports)."""
    times = {m: [] for m in modes}
    for i in range(rounds + 2):
        for m in modes[i % len(modes):] + modes[:i % len(modes)]:
            t0 = time.perf_counter()
            r = subprocess.run([str(RUN), "--net", m, "--rootfs", str(rootfs), "/bin/true"],
                               capture_output=True, text=True, env=user_env(pw), **kw)
            dt = (time.perf_counter() - t0) * 1000
            if r.returncode:
                sys.exit(f"net_iperf: --net {m}: run.py exited {r.returncode}: {r.stderr.strip()}")
            if i >= 2:                          # two warm-up rounds
                times[m].append(dt)
    return {m: statistics.median(xs) for m, xs in times.items()}


def spread(xs):
    return f"{statistics.median(xs):6.2f} ({min(xs):.2f}-{max(xs):.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", type=int, default=2, help="seconds per iperf3 run (default 2)")
    ap.add_argument("-n", type=int, default=3, help="rounds of every row (default 3)")
    ap.add_argument("--starts", type=int, default=15, help="start-latency rounds (default 15; 0: skip)")
    ap.add_argument("--rootfs", default=str(REPO / "rootfs_host"), help="busybox rootfs to copy")
    ap.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated, of {','.join(ROWS)}")
    a = ap.parse_args()
    rows = a.rows.split(",")
    if "loopback" not in rows:
        rows.insert(0, "loopback")
    pw, kw = container_user()
    dest, rootfs = make_rootfs(a.rootfs, pw)
    res = {k: [] for k in rows}
    try:
        for i in range(a.n):
            for k in rows[i % len(rows):] + rows[:i % len(rows)]:
                res[k].append(one_row(k, rootfs, pw, kw, a.t))
        modes = ["none"] + sorted({ROWS[k][0] for k in rows if k != "loopback"})
        by_mode = start_times(modes, rootfs, pw, kw, a.starts) if a.starts else {}
        starts = {k: by_mode[ROWS[k][0]] for k in rows if ROWS[k][0] in by_mode}
        starts["none"] = by_mode.get("none", 0)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    ver = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"TCP through -p 127.0.0.1:PORT:5201, {a.n} rounds x {a.t} s per direction, {os.cpu_count()} CPUs, "
          f"{os.uname().machine}, {ver}, load average {os.getloadavg()[0]:.1f}")
    print("Gbps: median (min-max); % of loopback: of the medians; start: median of "
          f"{a.starts} rounds, ms over --net none ({starts.get('none', 0):.1f} ms)")
    print(f"{'row':<42}{'host->ctr Gbps':>22}{'ctr->host Gbps':>22}{'h->c %':>8}{'c->h %':>8}"
          f"{'start +ms':>10}{'PSS MB':>8}")
    lo_h = statistics.median(x[0] for x in res["loopback"])
    lo_c = statistics.median(x[1] for x in res["loopback"])
    verdict = {}
    for k in rows:
        h = [x[0] for x in res[k]]
        c = [x[1] for x in res[k]]
        ph, pc = statistics.median(h) / lo_h, statistics.median(c) / lo_c
        pss = [x[2] for x in res[k]]
        pss_mb = None if None in pss else max(pss) / 1024
        st = starts[k] - starts["none"] if k in starts else None
        print(f"{ROWS[k][2]:<42}{spread(h):>22}{spread(c):>22}{ph:8.0%}{pc:8.0%}"
              + (f"{st:+10.1f}" if st is not None else f"{'':>10}")
              + (f"{pss_mb:8.1f}" if pss_mb is not None else f"{'n/a' if k != 'loopback' else '':>8}"))
        if k != "loopback":
            verdict[k] = (min(ph, pc), st, pss_mb)
    print(f"goals: >= {GOAL_RATIO:.0%} of loopback both ways, start <= +{GOAL_START_MS:g} ms, "
          f"helper <= {GOAL_PSS_MB:g} MB PSS")
    for k, (ratio, st, pss_mb) in verdict.items():
        marks = [f"throughput {'ok' if ratio >= GOAL_RATIO else 'MISSES'} ({ratio:.0%})"]
        if st is not None:
            marks.append(f"start {'ok' if st <= GOAL_START_MS else 'MISSES'} ({st:+.1f} ms)")
        if pss_mb is not None:
            marks.append(f"memory {'ok' if pss_mb <= GOAL_PSS_MB else 'MISSES'} ({pss_mb:.1f} MB)")
        print(f"  {ROWS[k][2]:<40}" + ", ".join(marks))


if __name__ == "__main__":
    main()
