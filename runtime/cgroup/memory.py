"""memory controller: memory.max, memory.swap.max, OOM detection (memory.events), memory.peak."""
from runtime.cgroup.fs import keyed, single
from runtime.errors import CgroupError, SpecError

NAME = "memory"


def requested(limits):
    return limits.memory is not None or limits.memory_swap is not None


def check(limits):
    """Option checks that compare values (before any fork)."""
    if limits.memory is not None and limits.memory <= 0:
        raise SpecError("--memory: must be more than 0 bytes")
    if limits.memory_swap is not None and limits.memory is None:
        raise SpecError("--memory-swap needs --memory")


def apply(fs, leaf, limits):
    """Write the limits into the leaf. Swap is off (memory.swap.max=0) unless --memory-swap SIZE, which is
    the swap the container may use on top of --memory (cli.py's help: "--memory-swap SIZE  memory.swap.max")."""
    if limits.memory is None:
        return
    fs.write(f"{leaf}/memory.max", limits.memory)
    swap = 0 if limits.memory_swap is None else limits.memory_swap
    path = f"{leaf}/memory.swap.max"
    if fs.read(path) is None:
        if limits.memory_swap is not None:
            raise CgroupError(f"cgroup memory.swap.max for --memory-swap: {path} does not exist (the kernel "
                              "has no swap accounting)",
                              "boot with swapaccount=1 / CONFIG_MEMCG_SWAP, or drop --memory-swap")
        return      # no swap accounting: nothing to turn off that the kernel would honour
    fs.write(path, swap)


def oom(fs, leaf):
    """(memory.max as text, oom_kill count) from the leaf; oom_kill 0 when nothing was killed."""
    events = keyed(fs.read(f"{leaf}/memory.events"))
    limit = (fs.read(f"{leaf}/memory.max") or "?").strip()
    return limit, events.get("oom_kill", 0)


def stats(fs, leaf):
    peak = single(fs.read(f"{leaf}/memory.peak"))
    if isinstance(peak, int):
        return [f"memory.peak={peak}"]
    cur = single(fs.read(f"{leaf}/memory.current"))
    if isinstance(cur, int):
        return [f"memory.current={cur} (memory.peak: not in this kernel)"]
    return []
