"""Regression guard for the README's memory figure: the PSS of a running container's supporting processes
(run.py, its intermediate process pirun-ns, the network helper; not the user's command) against the PSS of a
bare python3 process waiting for a child, measured in the same test with bench/memory.py's own code,
interleaved rounds, medians. A ratio, not an absolute size: PSS shares each page among the processes that map
it, so how many other Python processes run on the machine moves both sides alike.

Measured here (2026-12-03, seven other test suites running), PSS in kB, 3 interleaved rounds:

| | support | bare python3 | ratio |
|---|---:|---:|---:|
| `--net none` | 5 800 to 6 050 | 3 075 to 3 150 | 1.9 |
| `--net slirp4netns` (default) | 7 260 | 3 150 | 2.3 |

Bounds: 2.5 and 2.9 (about +30 %, 1.5 to 2 MB). The whole measurement is retried once before failing."""
import statistics
import sys

import pytest

from bench.memory import baseline_argv, container_argv, measure, total
from conftest import ROOTFS, check_rootfs, user_env, user_kwargs
from net_helpers import require_net_prereqs

ROUNDS = 3
BOUNDS = {"none": 2.5, "slirp4netns": 2.9}


def measure_once(net):
    kw = dict(user_kwargs(), env=user_env())
    support, base = [], []
    for _ in range(ROUNDS):
        rows = measure(container_argv(net, str(ROOTFS)), kw, f"run.py --net {net}")
        names = sorted(name for _pid, name, _m in rows)
        assert "run.py" in names and "pirun-ns" in names, names
        support.append(total(rows))
        base.append(total(measure(baseline_argv(), kw, "bare python3")))
    s, b = statistics.median(support), statistics.median(base)
    return s / b, f"{s / b:.2f} ({s:.0f} / {b:.0f} kB PSS; {' '.join(names)})"


@pytest.mark.parametrize("net", ["none", "slirp4netns"])
def test_supporting_processes_memory_stays_within_a_ratio_of_bare_python(rootfs, net):
    check_rootfs(ROOTFS, "the host-architecture test rootfs")
    if net == "slirp4netns":
        require_net_prereqs(user_kwargs(), user_env(), tools=("slirp4netns",))
    tries = []
    for _ in range(2):
        ratio, line = measure_once(net)
        tries.append(line)
        if ratio <= BOUNDS[net]:
            break
    print(f"memory --net {net}: {'; retry: '.join(tries)}", file=sys.stderr)
    assert ratio <= BOUNDS[net], (f"the container's supporting processes (--net {net}) use {'; then '.join(tries)} "
                                  f"of a bare python3's PSS (median of {ROUNDS} interleaved rounds, twice); "
                                  f"bound {BOUNDS[net]}")
