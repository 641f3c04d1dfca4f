"""50 detached containers started, listed, stopped and removed, in well under a minute."""
import concurrent.futures
import time

from conftest import alive
from lc_helpers import pirun  # noqa: F401  (fixture)

N = 50


def test_fifty_detached_containers(pirun):
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: pirun.detach("sleep", "600", name=f"n{i:02d}"), range(N)))
    assert len(set(ids)) == N
    entries = pirun.ps()
    assert sorted(e["Names"][0] for e in entries) == [f"n{i:02d}" for i in range(N)]
    assert all(e["State"] == "running" and alive(e["Pid"]) for e in entries)
    assert len(pirun("ps").stdout.splitlines()) == N + 1
    pids = [e["Pid"] for e in entries]
    r = pirun("stop", *[f"n{i:02d}" for i in range(N)], timeout=120)
    assert r.returncode == 0 and r.stdout.split() == [f"n{i:02d}" for i in range(N)], r.stderr
    assert not any(alive(p) for p in pids)
    assert {e["ExitCode"] for e in pirun.ps()} == {143}
    r = pirun("rm", "-a")
    assert r.returncode == 0 and len(r.stdout.split()) == N
    assert pirun.ps() == [] and pirun.leftovers() == []
    assert time.monotonic() - t0 < 60
