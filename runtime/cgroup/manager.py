"""The CgroupManager's work (imported only when a cgroup is used): create, add, result, stats, remove.

Leaf layout and order of operations, in every mode:
    BASE/cgroup.controllers        must list every requested controller (else CgroupError naming it + fix)
    BASE/cgroup.subtree_control    '+memory +pids +cpu' (what is needed and not yet on), one write; BASE holds
                                   no process (no-internal-process rule): run.py sits in a leaf of its own
    BASE/<leaf>/                   mkdir, then the limit files, then (add) the container's process I
"""
import os

from runtime.cgroup import cpu, discover, memory, pids
from runtime.cgroup.fs import CgroupFS, keyed
from runtime.errors import CgroupError
from runtime.hostconfig import expand_cgroup_base

CONTROLLERS = (memory, pids, cpu)
PREFIX = "pirun-"
SCOPE_LEAF = "container"
SCOPE_SUPERVISOR = "supervisor"


class State:
    def __init__(self, mgr, fs, probe):
        self.mgr = mgr
        self.fs = fs
        self.probe = probe
        self.base = None          # discover.Base
        self.leaf = None          # absolute path of the container's cgroup
        self.run_leaf = None      # where run.py was moved (own mode: CG/pirun-<id>-run; systemd: SCOPE/supervisor)
        self.scope = None         # systemd.Scope
        self.enabled = ()         # controllers this run turned on in BASE/cgroup.subtree_control
        self.pid = None           # run.py's pid
        self.removed = False


def create(mgr):
    fs = mgr.fs or CgroupFS()
    probe = mgr.probe or discover.Probe(fs)
    st = State(mgr, fs, probe)
    wanted = {c.NAME for c in CONTROLLERS if c.requested(mgr.limits)}
    from runtime.cgroup import config_asks
    if config_asks(mgr.hostcfg) and mgr.pids_default:
        wanted.add("pids")                  # the host configuration's default pids limit is required too
    base = discover.find(probe, mgr.hostcfg, wanted, mgr.required, expand_cgroup_base)
    if base is None:
        return st
    st.base = base
    try:
        _setup(st, wanted)
    except BaseException as e:
        remove(st)
        if mgr.required or not isinstance(e, CgroupError):
            raise
        return State(mgr, fs, probe)        # only the default pids limit was at stake: run without
    return st


def _setup(st, wanted):
    fs, probe, base, limits = st.fs, st.probe, st.base, st.mgr.limits
    st.pid = pid = probe.pid()
    name = f"{PREFIX}{pid}-{probe.start_time()}"
    if base.kind == "systemd":
        st.scope = probe.start_scope(name + ".scope", base.slice)
        base.path = base.mount + st.scope.cgroup
        st.run_leaf = f"{base.path}/{SCOPE_SUPERVISOR}"
        fs.mkdir(st.run_leaf)
        fs.write(f"{st.run_leaf}/cgroup.procs", st.scope.holder_pid)   # run.py leaves the scope's root
        leaf = f"{base.path}/{SCOPE_LEAF}"
    else:
        clean_stale(fs, probe, base.path)
        if base.kind == "own":
            st.run_leaf = f"{base.path}/{name}-run"
            fs.mkdir(st.run_leaf)
            fs.write(f"{st.run_leaf}/cgroup.procs", pid)
        leaf = f"{base.path}/{name}"

    available = set((fs.read(f"{base.path}/cgroup.controllers") or "").split())
    missing = wanted - available
    if missing:
        raise _missing(st, missing)
    extra = set()
    if st.mgr.pids_default:
        extra.add("pids")
    if limits.stats:
        extra.update(("memory", "pids"))
    need = wanted | (extra & available)
    current = set((fs.read(f"{base.path}/cgroup.subtree_control") or "").split())
    enable = [c.NAME for c in CONTROLLERS if c.NAME in need and c.NAME not in current]
    if enable:
        fs.write(f"{base.path}/cgroup.subtree_control", " ".join("+" + c for c in enable),
                 fix=f"{base.path} must hold no process itself (cgroup v2 no-internal-process rule); "
                     "move them into a child cgroup")
        st.enabled = tuple(enable)
    fs.mkdir(leaf)
    st.leaf = leaf
    memory.apply(fs, leaf, limits)
    if "pids" in need:
        pids.apply(fs, leaf, limits.pids if limits.pids is not None else st.mgr.pids_default)
    cpu.apply(fs, leaf, limits)


def _missing(st, missing):
    """The error for requested controllers that BASE does not offer, with the reason for each case."""
    fs, probe, base = st.fs, st.probe, st.base
    in_kernel = set((fs.read(f"{base.mount}/cgroup.controllers") or "").split())
    absent = sorted(c for c in missing if c not in in_kernel)
    if absent:
        return discover.unusable(set(absent), "not enabled in this kernel (missing from "
                                 f"{base.mount}/cgroup.controllers)", probe)
    names = " ".join(sorted(missing))
    if base.kind == "systemd":
        uid = probe.uid()
        have = " ".join(sorted(set((fs.read(f"{base.path}/cgroup.controllers") or "").split()))) or "none"
        return discover.unusable(missing, f"not delegated to uid {uid} by systemd (user@{uid}.service "
                                 f"delegates only: {have})",
                                 probe, "add /etc/systemd/system/user@.service.d/delegate.conf with [Service] "
                                 f"Delegate=cpu cpuset io memory pids (the {discover.ROLE} Ansible role does it), "
                                 "then log out and in again")
    return discover.unusable(missing, f"not delegated to {base.path} (not in its cgroup.controllers; enable "
                             f"+{names} in cgroup.subtree_control of each ancestor)", probe)


def add(st, pid):
    """Move process `pid` (I) into the leaf and check that it is there."""
    try:
        _add(st, pid)
    except CgroupError:
        if st.mgr.required:
            raise
        remove(st)          # default pids limit only: run without a cgroup rather than fail
        st.leaf = None


def _add(st, pid):
    fs, probe = st.fs, st.probe
    try:
        fs.write(f"{st.leaf}/cgroup.procs", pid)
    except CgroupError as e:
        import errno
        if getattr(e, "errno", None) in (errno.EACCES, errno.EPERM):
            e.fix = ("moving a process needs write access to cgroup.procs of the common ancestor of its "
                     f"cgroup and {st.leaf}")
        raise
    v2, _ = discover.parse_proc_cgroup(probe.proc_cgroup(pid))
    if v2 is None or st.base.mount + v2.rstrip("/") != st.leaf:
        raise CgroupError(f"cgroup add pid {pid}: it is in {v2!r}, not in {st.leaf}")


def killed_by_sigkill(ended):
    """True when the container's PID 1 was killed by SIGKILL, or exited 137 (a shell reporting its child killed
    by SIGKILL). `ended` is the launcher's Ended record."""
    return ended is not None and (ended.signal == 9 or ended.code == 137)


def result(st, ended):
    """The OOM line when the container ended by SIGKILL and the kernel's OOM killer acted in the leaf."""
    if not st.leaf or not killed_by_sigkill(ended):
        return None
    limit, kills = memory.oom(st.fs, st.leaf)
    if kills <= 0:
        return None
    return f"container killed: out of memory (memory.max={limit}, oom_kill={kills})"


def stats(st):
    from runtime.sizes import format_size
    fs, leaf = st.fs, st.leaf
    parts = []
    for item in memory.stats(fs, leaf) + cpu.stats(fs, leaf) + pids.stats(fs, leaf):
        key, _, value = item.partition("=")
        if key in ("memory.peak", "memory.current") and value.isdigit():
            item += f" ({format_size(int(value))})"
        elif key == "cpu.usage_usec" and value.isdigit():
            item += f" ({int(value) / 1e6:.2f}s)"
        parts.append(item)
    return "stats: " + " ".join(parts)


def remove(st):
    """Remove the leaf (killing stragglers), release the scope or run.py's own leaf. Idempotent, quiet."""
    if st.removed:
        return
    st.removed = True
    fs = st.fs
    if st.leaf:
        remove_leaf(fs, st.leaf)
    # A systemd scope needs nothing more: systemd removes it once run.py, its last process, has exited.
    if st.scope is None and st.run_leaf and st.base is not None:
        # own mode: run.py goes back to its cgroup (only possible with the controllers off again)
        if st.enabled:
            try:
                fs.write(f"{st.base.path}/cgroup.subtree_control", " ".join("-" + c for c in st.enabled))
            except CgroupError:
                pass
        try:
            fs.write(f"{st.base.path}/cgroup.procs", st.pid)
            fs.rmdir(st.run_leaf)
        except CgroupError:
            pass


def remove_leaf(fs, leaf, wait=2.0):
    """rmdir a leaf; if processes remain, cgroup.kill them and wait (bounded) until it is empty."""
    err = fs.rmdir(leaf)
    if err is None:
        return True
    import errno
    if err.errno != errno.EBUSY:
        return False
    try:
        fs.write(f"{leaf}/cgroup.kill", "1")
    except CgroupError:
        return False
    import time
    deadline = time.monotonic() + wait
    while keyed(fs.read(f"{leaf}/cgroup.events")).get("populated", 0):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return fs.rmdir(leaf) is None


def clean_stale(fs, probe, base):
    """Remove leaves `pirun-<pid>-<start>[-run]` of run.py instances that no longer exist."""
    for entry in fs.listdir(base):
        if not entry.startswith(PREFIX):
            continue
        parts = entry[len(PREFIX):].split("-")
        if len(parts) not in (2, 3) or not parts[0].isdigit() or not parts[1].isdigit():
            continue
        if len(parts) == 3 and parts[2] != "run":
            continue
        if str(probe.start_time(parts[0])) == parts[1]:
            continue                        # its run.py is alive
        path = f"{base}/{entry}"
        if fs.isdir(path):
            remove_leaf(fs, path, wait=0.5)


def release(st, pid):
    """Move process `pid` (I, which forked the container's PID 1 inside the leaf) back beside run.py, so that
    only the container's own processes are in the leaf: counted by its pids.max, charged to its memory.max,
    candidates of its OOM killer. Best effort: if the move fails, I just stays where it was."""
    if not st.leaf:
        return
    target = st.run_leaf
    if target is None:
        v2, _ = discover.parse_proc_cgroup(st.probe.proc_cgroup("self"))
        if v2 is None:
            return
        target = st.base.mount + v2.rstrip("/")
    try:
        st.fs.write(f"{target}/cgroup.procs", pid)
    except CgroupError:
        pass
