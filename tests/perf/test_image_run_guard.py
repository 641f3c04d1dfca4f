"""Regression guard for the README's Images figure: `pirun run --pull=never --net none IMAGE true` against
`run.py --net none --rootfs DIR true` (the same busybox tree: DIR, and a one-layer image of it), measured in
the same test with bench/images.py's own code (interleaved rounds), as the test user. The statistic is the
ratio of the first deciles of wall time (the 3rd fastest of 30 rounds), as in test_startup_guard.py: the
fastest rounds are those the machine's load spared, and a fixed delay on the image path (a sleep, a wait for a
lock or a helper) shifts them in full. A ratio, because load stretches both commands alike. CPU time is printed
beside it (a sleep costs none, so it cannot be the guard).

Measured here (2-core CI machine shared with other test suites, 2026-12-03), 30 rounds, each line one
measurement:

| first-decile ratio pirun run IMAGE / run.py --rootfs DIR | load average | ratio |
|---|---:|---|
| as is (run.py 31 to 33 ms) | 3.1 to 3.3 | 1.15, 1.19 |
| as is (run.py 72 to 73 ms) | 4.2 to 4.5 | 1.29, 1.38 |
| with a deliberate 30 ms sleep in `prepare` (run.py 30 to 33 ms) | 3.0 to 3.3 | 2.28, 2.15, 2.13, 2.11 |
| with the same sleep (run.py 40 to 70 ms) | 4.5 to 5.4 | 2.66, 1.94 |

Bound: 1.6.

The whole measurement is retried once before failing, so one burst of load elsewhere does not fail it; a
real regression fails both."""
import json
import os
import subprocess
import sys

from conftest import REPO, ROOTFS, check_rootfs, user_env, user_kwargs

sys.path.insert(0, str(REPO / "tests" / "image"))
from image_helpers import chown_tree, pirun, root  # noqa: E402,F401  (root: the fixture)

BOUND = 1.6
ROUNDS = 30


def first_decile(values):
    return sorted(values)[len(values) // 10]


def measure_once(store):
    from bench.images import BASE, IMAGE, MEASURE_AS_USER
    import statistics
    r = subprocess.run(["/usr/bin/python3", "-I", "-c", MEASURE_AS_USER, str(REPO), str(store), str(ROOTFS),
                        str(ROUNDS), BASE, IMAGE],
                       capture_output=True, text=True, timeout=600, env=user_env(), cwd="/", **user_kwargs())
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    low = {k: first_decile(res[k]["wall"]) for k in (BASE, IMAGE)}
    cpu = {k: statistics.median(res[k]["cpu"]) for k in (BASE, IMAGE)}
    med = {k: statistics.median(res[k]["wall"]) for k in (BASE, IMAGE)}
    ratio = low[IMAGE] / low[BASE]
    return ratio, (f"{ratio:.2f} ({low[IMAGE]:.1f} vs {low[BASE]:.1f} ms, {low[IMAGE] - low[BASE]:+.1f}; medians {med[IMAGE]:.1f} vs "
                  f"{med[BASE]:.1f}, CPU medians {cpu[IMAGE]:.1f} vs {cpu[BASE]:.1f} ms; load average "
                  f"{res['load'][0]:.1f} to {res['load'][1]:.1f})")


def test_pirun_run_image_stays_within_a_bound_of_run_py(root, tmp_path):
    check_rootfs(ROOTFS, "the host-architecture test rootfs")
    from bench.images import layout, tree_tar
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(REPO / "runtime")], check=True,
                   stdout=subprocess.DEVNULL)
    lay = root.parent / "busybox-layout"
    layout(lay, [tree_tar(ROOTFS)], "bb:1")
    chown_tree(lay)
    r = pirun(["load", "-i", lay], root)
    assert r.returncode == 0, r.stderr
    tries = []
    for _ in range(2):
        ratio, line = measure_once(root)
        tries.append(line)
        if ratio <= BOUND:
            break
    print(f"pirun run IMAGE over run.py --rootfs DIR, first-decile ratio of {ROUNDS} interleaved rounds: "
          f"{'; retry: '.join(tries)}", file=sys.stderr)
    assert ratio <= BOUND, (f"`pirun run IMAGE true` over `run.py --rootfs DIR true`, first-decile ratio of {ROUNDS} "
                            f"interleaved rounds, measured twice: {'; then '.join(tries)}; bound {BOUND}")
    assert os.listdir(root / "containers") == [], "writable layers left behind"
