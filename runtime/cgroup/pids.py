"""pids controller: pids.max (requested, or the host's default), pids.peak / pids.current."""
from runtime.cgroup.fs import single
from runtime.errors import SpecError

NAME = "pids"
DEFAULT_LIMIT = 2048     # like podman's pids_limit; hostconfig `pids_limit` overrides, 0 turns it off


def requested(limits):
    return limits.pids is not None


def check(limits):
    if limits.pids is not None and limits.pids < 1:
        raise SpecError("--pids: must be at least 1")


def apply(fs, leaf, limit):
    fs.write(f"{leaf}/pids.max", limit)


def stats(fs, leaf):
    peak = single(fs.read(f"{leaf}/pids.peak"))
    if isinstance(peak, int):
        return [f"pids.peak={peak}"]
    events = fs.read(f"{leaf}/pids.events")
    out = ["pids.peak: not in this kernel"]
    if events and "max" in events:
        hits = events.split()[-1]
        if hits != "0":
            out.append(f"pids.events max={hits}")
    return out
