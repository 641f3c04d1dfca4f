"""cpu controller: cpu.max from --cpus (quota/period), cpu.weight; cpu.stat usage for --stats."""
from runtime.cgroup.fs import keyed
from runtime.errors import SpecError

NAME = "cpu"
PERIOD = 100000          # microseconds, the kernel's and runc's default period
MIN_QUOTA = 1000         # the kernel refuses quotas below 1 ms


def requested(limits):
    return limits.cpus is not None or limits.cpu_weight is not None


def quota(cpus):
    return int(round(cpus * PERIOD))


def check(limits):
    if limits.cpus is not None:
        cpus = limits.cpus
        if not (cpus == cpus) or cpus <= 0 or cpus == float("inf"):
            raise SpecError(f"--cpus: {cpus!r} is not a positive number of CPUs")
        if quota(cpus) < MIN_QUOTA:
            raise SpecError(f"--cpus: {cpus} is below the minimum of {MIN_QUOTA / PERIOD} CPUs")
    if limits.cpu_weight is not None and not 1 <= limits.cpu_weight <= 10000:
        raise SpecError(f"--cpu-weight: {limits.cpu_weight} is outside 1..10000")


def apply(fs, leaf, limits):
    if limits.cpus is not None:
        fs.write(f"{leaf}/cpu.max", f"{quota(limits.cpus)} {PERIOD}")
    if limits.cpu_weight is not None:
        fs.write(f"{leaf}/cpu.weight", limits.cpu_weight)


def stats(fs, leaf):
    """cpu.stat is a core file: present with or without the cpu controller."""
    st = keyed(fs.read(f"{leaf}/cpu.stat"))
    if "usage_usec" not in st:
        return []
    out = [f"cpu.usage_usec={st['usage_usec']}"]
    for key in ("user_usec", "system_usec", "nr_throttled"):
        if key in st:
            out.append(f"cpu.{key}={st[key]}")
    return out
