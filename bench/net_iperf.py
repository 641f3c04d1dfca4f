#!/usr/bin/python3
"""TCP throughput through a published port, both directions, per network backend (issue 3, benchmark b).

    python3 bench/net_iperf.py [-t 5] [--rootfs DIR] [--rows slirp4netns-1500,slirp4netns,pasta]

Rows: slirp4netns at MTU 1500 (the seed's setting, via PIRUN_SLIRP4NETNS_MTU=1500), slirp4netns at 65520 (our
default), pasta (MTU 65520). For each row the container runs `iperf3 -s` published with
`-p 127.0.0.1:PORT:5201`; the host runs `iperf3 -c 127.0.0.1 -p PORT` (host -> container) and with `-R`
(container -> host). All traffic stays on this machine.

iperf3 in the container: Debian's iperf3 (apt-get install iperf3) is copied, with the shared libraries `ldd`
lists and the dynamic loader, into a throwaway copy of the busybox rootfs (a host-architecture rootfs variant,
2-3 MB; removed at the end). Nothing in the repository's rootfs changes.

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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "runtime" / "run.py"
sys.path.insert(0, str(REPO / "tests"))
from net_helpers import free_port   # noqa: E402

ROWS = {
    "slirp4netns-1500": ("slirp4netns", {"PIRUN_SLIRP4NETNS_MTU": "1500"}, "slirp4netns, MTU 1500 (seed)"),
    "slirp4netns": ("slirp4netns", {}, "slirp4netns, MTU 65520 (default)"),
    "pasta": ("pasta", {}, "pasta, MTU 65520"),
}


def container_user():
    if os.geteuid() != 0:
        pw = pwd.getpwuid(os.getuid())
        return pw, {}
    pw = pwd.getpwnam(os.environ.get("PIRUN_TEST_USER", "pirun"))
    return pw, {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


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
        for dirpath, dirnames, filenames in os.walk(dest):
            for n in dirnames + filenames + [""]:
                os.lchown(os.path.join(dirpath, n), pw.pw_uid, pw.pw_gid)
    return dest, root, iperf


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
        time.sleep(0.2)                        # the server in the container is not listening yet
    raise RuntimeError(f"iperf3 client failed: {last}")


def one_row(key, rootfs, pw, kw, seconds):
    net, extra_env, _ = ROWS[key]
    port = free_port()
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": pw.pw_dir, "USER": pw.pw_name,
           "LANG": "C.UTF-8", **extra_env}
    argv = [str(RUN), "--net", net, "--rootfs", str(rootfs), "-p", f"127.0.0.1:{port}:5201",
            "/usr/bin/iperf3", "-s", "-p", "5201", "--forceflush"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)
    try:
        for line in proc.stdout:
            if "Server listening" in line:
                break
        else:
            raise RuntimeError(f"{key}: run.py exited {proc.wait()}: {proc.stderr.read().strip()}")
        h2c = iperf_client(port, seconds, reverse=False)
        c2h = iperf_client(port, seconds, reverse=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    return h2c, c2h


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-t", type=int, default=5, help="seconds per direction (default 5)")
    ap.add_argument("--rootfs", default=str(REPO / "rootfs_host"), help="busybox rootfs to copy")
    ap.add_argument("--rows", default=",".join(ROWS))
    a = ap.parse_args()
    pw, kw = container_user()
    dest, rootfs, iperf = make_rootfs(a.rootfs, pw)
    results = {}
    try:
        for key in a.rows.split(","):
            results[key] = one_row(key, rootfs, pw, kw, a.t)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    ver = subprocess.run(["iperf3", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"TCP throughput through -p 127.0.0.1:PORT:5201, {a.t} s per direction, {os.cpu_count()} CPUs, "
          f"{os.uname().machine}, {ver}")
    print(f"{'backend':<36}{'host->ctr Gbps':>16}{'ctr->host Gbps':>16}")
    for key, (h2c, c2h) in results.items():
        print(f"{ROWS[key][2]:<36}{h2c:16.2f}{c2h:16.2f}")
    if "slirp4netns-1500" in results:
        b_h2c, b_c2h = results["slirp4netns-1500"]
        print("ratios against slirp4netns MTU 1500:")
        for key, (h2c, c2h) in results.items():
            if key != "slirp4netns-1500":
                print(f"  {ROWS[key][2]:<34}{h2c / b_h2c:7.1f}x host->ctr {c2h / b_c2h:7.1f}x ctr->host")
        if "slirp4netns" in results:
            h2c, c2h = results["slirp4netns"]
            worst = min(h2c / b_h2c, c2h / b_c2h)
            print(f"default vs seed: {worst:.1f}x at worst: {'meets' if worst >= 3 else 'MISSES'} the 3x target")


if __name__ == "__main__":
    main()
