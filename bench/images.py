#!/usr/bin/python3
"""Images: run latency on an overlay, pull speed against podman, disk use of many containers (one run).

    python3 bench/images.py [--rounds 30] [--pull-rounds 3] [--containers 20] [--skip-pull | --only-pull]

Run as root (it starts a local registry and re-runs pirun and podman as $PIRUN_TEST_USER, default pirun).
  1. `pirun run IMAGE true` against `run.py --rootfs DIR true` (the same busybox tree), interleaved rounds.
     Target: the overlay (and the store) cost at most 5 ms more.
  2. A ~50 MB image of 5 layers (random, incompressible data) pushed to Debian's docker-registry on
     127.0.0.1, pulled to runnable by `pirun pull` and by `podman pull` (fresh stores each round,
     interleaved). Target: pirun at most 0.8 x podman. Then a second image that shares 4 of its layers:
     only the new layer is downloaded and stored.
  3. N containers of one image, each writing 100 kB: the store grows by their upper layers only.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIRUN = REPO / "runtime" / "pirun"
RUN = REPO / "runtime" / "run.py"
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "image")]


def user():
    name = os.environ.get("PIRUN_TEST_USER") or ("pirun" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name)
    pw = pwd.getpwnam(name)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": pw.pw_dir, "USER": pw.pw_name,
           "LANG": "C.UTF-8"}
    return pw, env


PW, ENV = user()
KW = {"user": PW.pw_uid, "group": PW.pw_gid, "extra_groups": []}


def as_user(argv, env=None, check=True, **kw):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env={**ENV, **(env or {})},
                       cwd="/", **KW, **kw)
    if check and r.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, argv))} exited {r.returncode}: {r.stderr.strip()}")
    return r


def timed(argv, env=None):
    t0 = time.perf_counter()
    as_user(argv, env)
    return (time.perf_counter() - t0) * 1000


def timed_cpu(argv):
    """(wall ms, CPU ms of the whole process tree: user + system, from wait4's rusage)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV,
                         cwd="/", **KW)
    _, status, ru = os.wait4(p.pid, 0)
    wall = (time.perf_counter() - t0) * 1000
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"bench: {' '.join(map(str, argv))} exited {p.returncode}")
    return wall, (ru.ru_utime + ru.ru_stime) * 1000


def user_dir(prefix):
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=PW.pw_dir))
    os.chown(d, PW.pw_uid, PW.pw_gid)
    return d


def chown_tree(path):
    for dirpath, dirnames, filenames in os.walk(path):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), PW.pw_uid, PW.pw_gid)
    os.chown(path, PW.pw_uid, PW.pw_gid)


def blob(dest, data):
    d = hashlib.sha256(data).hexdigest()
    (dest / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (dest / "blobs" / "sha256" / d).write_bytes(data)
    return {"digest": f"sha256:{d}", "size": len(data)}


def layout(dest, raw_layers, tag, config=None):
    dest.mkdir(parents=True, exist_ok=True)
    descs, diff_ids = [], []
    for raw in raw_layers:
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                      **blob(dest, gzip.compress(raw, compresslevel=1, mtime=0))})
    cfg = {"architecture": "amd64" if os.uname().machine == "x86_64" else "arm64", "os": "linux",
           "config": config or {"Cmd": ["/bin/true"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    man = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(dest, json.dumps(cfg).encode())},
           "layers": descs}
    m = blob(dest, json.dumps(man).encode())
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **m,
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))


def tree_tar(rootfs):
    buf = io.BytesIO()

    def reset(ti):
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        return ti
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(str(rootfs), arcname=".", filter=reset)
    return buf.getvalue()


def data_tar(name, size, files=40):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        d = tarfile.TarInfo(f"opt/{name}")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(d)
        for i in range(files):
            data = os.urandom(size // files)
            ti = tarfile.TarInfo(f"opt/{name}/f{i}")
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def med(xs):
    return statistics.median(xs)


def p90(xs):
    return statistics.quantiles(xs, n=10)[-1] if len(xs) >= 2 else xs[0]


BASE = "run.py --net none --rootfs DIR true"
IMAGE = "pirun run --net none IMAGE true"


def run_commands(store, rootfs, image="bb:1", runpy=RUN, pirun=PIRUN):
    """The commands of section 1 by name: run.py (the baseline), the pirun command without an image, the
    throwaway overlay over a directory, and a container of an image."""
    return {
        BASE: [str(runpy), "--net", "none", "--rootfs", str(rootfs), "true"],
        "pirun run --net none --rootfs DIR true": [str(pirun), "--root", str(store), "run", "--net", "none",
                                                    "--rootfs", str(rootfs), "true"],
        "pirun run --net none --rootfs DIR:O true": [str(pirun), "--root", str(store), "run", "--net", "none",
                                                      "--rootfs", f"{rootfs}:O", "true"],
        IMAGE: [str(pirun), "--root", str(store), "run", "--pull=never", "--net", "none", image, "true"],
    }


def spawn_wait4(argv):
    """(wall ms, CPU ms of the process tree: user + system from wait4's rusage), in the calling user."""
    devnull = os.open(os.devnull, os.O_RDWR)
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                                  (os.POSIX_SPAWN_DUP2, devnull, 1),
                                                                  (os.POSIX_SPAWN_DUP2, devnull, 2)])
    _, status, ru = os.wait4(pid, 0)
    wall = (time.perf_counter() - t0) * 1000
    os.close(devnull)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"bench: {' '.join(argv)} exited {code}")
    return wall, (ru.ru_utime + ru.ru_stime) * 1000


def measure_run(commands, rounds):
    """{name: {"wall": [ms...], "cpu": [ms...]}}, interleaved rounds after one warm-up round, plus the load
    average before and after ("load": [1-minute, 1-minute])."""
    out = {name: {"wall": [], "cpu": []} for name in commands}
    for argv in commands.values():
        spawn_wait4(argv)
    load = os.getloadavg()[0]
    for _ in range(rounds):
        for name, argv in commands.items():
            wall, cpu = spawn_wait4(argv)
            out[name]["wall"].append(wall)
            out[name]["cpu"].append(cpu)
    out["load"] = [load, os.getloadavg()[0]]
    return out


MEASURE_AS_USER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from bench.images import measure_run, run_commands
c = run_commands(sys.argv[2], sys.argv[3])
print(json.dumps(measure_run({k: c[k] for k in sys.argv[5:]} if sys.argv[5:] else c, int(sys.argv[4]))))
"""


def first_decile(xs):
    return sorted(xs)[len(xs) // 10]


def bench_run(work, rounds):
    store = work / "store-run"
    lay = work / "busybox"
    layout(lay, [tree_tar(REPO / "rootfs_host")], "bb:1")
    chown_tree(lay)
    as_user([PIRUN, "--root", store, "load", "-i", lay])
    r = as_user(["/usr/bin/python3", "-I", "-c", MEASURE_AS_USER, REPO, store, REPO / "rootfs_host", rounds])
    res = json.loads(r.stdout)
    load = res.pop("load")
    print(f"\n1. start-up, {rounds} interleaved rounds (ms; CPU = user + system of the process tree; load average "
          f"{load[0]:.1f} before, {load[1]:.1f} after)\n")
    print("| command | wall median | wall p10 | wall p90 | CPU median | CPU p10 | over run.py: wall, CPU (medians) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    b = res[BASE]
    for k, v in res.items():
        print(f"| `{k}` | {med(v['wall']):.1f} | {first_decile(v['wall']):.1f} | {p90(v['wall']):.1f} | "
              f"{med(v['cpu']):.1f} | {first_decile(v['cpu']):.1f} | "
              f"{med(v['wall']) - med(b['wall']):+.1f}, {med(v['cpu']) - med(b['cpu']):+.1f} |")
    over = med(res[IMAGE]["wall"]) - med(b["wall"])
    cover = med(res[IMAGE]["cpu"]) - med(b["cpu"])
    print(f"\npirun run IMAGE over run.py --rootfs: {over:+.1f} ms wall, {cover:+.1f} ms CPU (target <= 5 ms: "
          f"wall {'met' if over <= 5 else 'MISSED'}, CPU {'met' if cover <= 5 else 'MISSED'}); first deciles: "
          f"{first_decile(res[IMAGE]['wall']) - first_decile(b['wall']):+.1f} ms wall, "
          f"{first_decile(res[IMAGE]['cpu']) - first_decile(b['cpu']):+.1f} ms CPU")
    containers = [p for p in (store / "containers").iterdir()]
    print(f"writable layers left behind: {len(containers)}")
    return store


def bench_pull(work, rounds):
    from image_helpers import Registry
    reg_dir = work / "registry"
    reg_dir.mkdir()
    reg = Registry(reg_dir)
    try:
        base = tree_tar(REPO / "rootfs_host")
        layers = [base] + [data_tar(f"d{i}", 12 << 20) for i in range(4)]
        big = work / "big"
        layout(big, layers, "big:1")
        child = work / "child"
        layout(child, layers[:4] + [data_tar("child", 2 << 20)], "child:1")
        size = sum(p.stat().st_size for p in (big / "blobs" / "sha256").iterdir())
        reg.push(f"oci:{big}:big:1", "big:1")
        reg.push(f"oci:{child}:child:1", "child:1")
        ref = f"{reg.host}/big:1"
        pir, pod = [], []
        for r in range(rounds):
            s = user_dir("pirun-bench-store-")
            pir.append(timed([PIRUN, "--root", s / "store", "pull", "--tls-verify=false", "-q", ref]))
            as_user([PIRUN, "--root", s / "store", "image", "prune", "-a"])
            shutil.rmtree(s)
            h = user_dir("pirun-bench-podman-")
            env = {"HOME": str(h), "XDG_RUNTIME_DIR": str(h / "run"), "XDG_DATA_HOME": str(h / "data"),
                   "XDG_CONFIG_HOME": str(h / "config")}
            (h / "run").mkdir()
            chown_tree(h)
            pm = ["podman", "--root", h / "storage", "--runroot", h / "run", "--cgroup-manager", "cgroupfs",
                  "--events-backend", "none"]
            pod.append(timed(pm + ["pull", "-q", "--tls-verify=false", ref], env))
            as_user(pm + ["system", "reset", "-f"], env, check=False)
            subprocess.run(["rm", "-rf", str(h)])
        s = user_dir("pirun-bench-store-")
        store = s / "store"
        as_user([PIRUN, "--root", store, "pull", "--tls-verify=false", "-q", ref])
        before = {p.name for p in (store / "layers").iterdir() if len(p.name) == 64}
        t_child = timed([PIRUN, "--root", store, "pull", "--tls-verify=false", "-q", f"{reg.host}/child:1"])
        after = {p.name for p in (store / "layers").iterdir() if len(p.name) == 64}
        runnable = as_user([PIRUN, "--root", store, "run", "--pull=never", "--net", "none", ref, "ls", "/opt"])
        as_user([PIRUN, "--root", store, "image", "prune", "-a"])
        shutil.rmtree(s)
    finally:
        reg.stop()
    print(f"\n2. pull to runnable of a {size / 1e6:.0f} MB image (5 layers) from docker-registry on 127.0.0.1, "
          f"{rounds} interleaved rounds (ms)\n")
    print("| command | median | min |\n|---|---:|---:|")
    print(f"| `pirun pull` | {med(pir):.0f} | {min(pir):.0f} |")
    print(f"| `podman pull` (overlay) | {med(pod):.0f} | {min(pod):.0f} |")
    ratio = med(pir) / med(pod)
    print(f"\npirun / podman: {ratio:.2f} x (target <= 0.8: {'met' if ratio <= 0.8 else 'MISSED'}); "
          f"runnable: {runnable.stdout.split()}")
    print(f"second image sharing 4 of 5 layers: {t_child:.0f} ms, {len(after - before)} new layer(s) stored")


def du(path):
    r = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True)
    return int(r.stdout.split()[0]) if r.returncode == 0 else 0


def bench_disk(store, n):
    before = du(store / "layers")
    procs = []
    for _ in range(n):
        procs.append(subprocess.Popen([str(PIRUN), "--root", str(store), "run", "--pull=never", "--net", "none",
                                       "bb:1", "sh", "-c", "dd if=/dev/urandom of=/data bs=1k count=100 "
                                       "2>/dev/null; echo ready; sleep 60"], stdout=subprocess.PIPE, text=True,
                                      env=ENV, cwd="/", **KW))
    for p in procs:
        assert p.stdout.readline() == "ready\n"
    layers = du(store / "layers")
    uppers = [du(p / "upper") for p in (store / "containers").iterdir()]
    df = as_user([PIRUN, "--root", store, "system", "df"]).stdout
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    left = list((store / "containers").iterdir())
    print(f"\n3. {n} containers of one image, each writing 100 kB\n")
    print(f"image layers: {before / 1e6:.2f} MB before, {layers / 1e6:.2f} MB with {n} containers running;"
          f" their upper layers: {sum(uppers) / 1e6:.2f} MB in all ({statistics.mean(uppers) / 1e3:.0f} kB each);"
          f" left after they ended: {len(left)}")
    print("pirun system df:\n" + "".join("    " + line + "\n" for line in df.splitlines()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--pull-rounds", type=int, default=3)
    ap.add_argument("--containers", type=int, default=20)
    ap.add_argument("--skip-pull", action="store_true")
    ap.add_argument("--only-pull", action="store_true")
    args = ap.parse_args()
    if os.getuid() != 0:
        sys.exit("bench: run as root (it starts a registry and runs pirun as $PIRUN_TEST_USER)")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "runtime")], capture_output=True)
    work = user_dir("pirun-bench-")
    print(f"images benchmark, {os.uname().machine}, {time.strftime('%Y-%m-%d')}, user {PW.pw_name}, "
          f"store in {PW.pw_dir}")
    try:
        if args.only_pull:
            bench_pull(work, args.pull_rounds)
            return
        store = bench_run(work, args.rounds)
        if not args.skip_pull:
            bench_pull(work, args.pull_rounds)
        bench_disk(store, args.containers)
        as_user([PIRUN, "--root", store, "image", "prune", "-a"])
    finally:
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
