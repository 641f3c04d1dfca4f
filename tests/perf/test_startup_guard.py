"""Regression guard for the README's start-up figure: `run.py --net none /bin/true` against
`python3 -I -c pass` measured in the same test, as the test user, with bench/startup.py's own code
(interleaved rounds). A ratio, not an absolute time: both sides slow down alike on a loaded machine.

The statistic is the first decile of each command's rounds (the 3rd fastest of 30), not the median. Measured
here (2-core CI machine shared with seven other test suites, load average 6 to 9, 2026-12-03), 25 and 30
rounds, 7 and 10 measurements:

| ratio run.py / python3 -I -c pass | median | first decile |
|---|---:|---:|
| as is (python3 median 31 to 59 ms) | 2.43 to 3.01 | 2.37 to 3.09 |
| with a deliberate 30 ms sleep in run.py's start (python3 median 40 to 73 ms) | 3.05 to 3.77 | 3.43 to 4.67 |

On an idle machine the median ratio is 2.3 to 2.8 (README, FIELD-NOTES). Under load the median cannot tell a
30 ms regression from a busy neighbour: load stretches every round, so a fixed delay weighs less in the
median; the fastest rounds are the ones load spared, and a fixed delay shifts them in full. Bound: 3.3 on the
first decile. The whole measurement is retried once before failing, so one burst of load elsewhere does not
fail it; a real regression fails both."""
import json
import subprocess
import sys

from conftest import REPO, ROOTFS, check_rootfs, user_env, user_kwargs

BOUND = 3.3
ROUNDS = 30
PY = "python3 -I -c pass"
RUNPY = "run.py --net none /bin/true"
MEASURE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from bench.startup import commands, measure
c = commands(sys.argv[2])
print(json.dumps(measure({k: c[k] for k in sys.argv[4:]}, int(sys.argv[3]))))
"""


def first_decile(values):
    return sorted(values)[len(values) // 10]


def measure_once():
    """(first-decile ratio, a one-line summary), measured by bench/startup.py's measure() as the test user."""
    import statistics
    r = subprocess.run(["/usr/bin/python3", "-I", "-c", MEASURE, str(REPO), str(ROOTFS), str(ROUNDS), PY, RUNPY],
                       capture_output=True, text=True, timeout=300, env=user_env(), cwd="/", **user_kwargs())
    assert r.returncode == 0, r.stderr
    times = json.loads(r.stdout)
    low = {k: first_decile(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = low[RUNPY] / low[PY]
    return ratio, (f"{ratio:.2f} ({low[RUNPY]:.1f} / {low[PY]:.1f} ms; medians {med[RUNPY]:.1f} / "
                   f"{med[PY]:.1f} ms, ratio {med[RUNPY] / med[PY]:.2f})")


def test_run_py_start_up_stays_within_a_ratio_of_the_interpreter(rootfs):
    check_rootfs(ROOTFS, "the host-architecture test rootfs")
    # what scripts/test does first: a stale or missing byte-code cache would be measured as a regression
    subprocess.run(["/usr/bin/python3", "-m", "compileall", "-q", str(REPO / "runtime")], check=True,
                   stdout=subprocess.DEVNULL)
    tries = []
    for _ in range(2):
        ratio, line = measure_once()
        tries.append(line)
        if ratio <= BOUND:
            break
    print(f"start-up, first-decile ratio over {ROUNDS} interleaved rounds: {'; retry: '.join(tries)}",
          file=sys.stderr)
    assert ratio <= BOUND, (f"run.py's start-up over `python3 -I -c pass`, first decile of {ROUNDS} interleaved "
                            f"rounds, measured twice: {'; then '.join(tries)}; bound {BOUND}")
