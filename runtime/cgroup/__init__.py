"""cgroup v2 resource limits: one manager, one file per controller, one function for every write.

    manager_for(limits, hostcfg) -> CgroupManager | None        (P, before fork)
        None: no limit requested and no usable cgroup: the container runs without one, silently.
    mgr.create()          P, before fork: find the delegated base, make the leaf, enable controllers, write
                          limits; raise CgroupError naming the controller and the fix
    mgr.add(pid)          P: move process I into the leaf after it has unshared its user namespace and before
                          it unshares its cgroup namespace (the command is never unconfined)
    mgr.release(pid)      P, once I has forked PID 1 in the leaf: move I back out (only the container's
                          processes count against its limits and face its OOM killer)
    mgr.result(ended)     P, after exit (`ended`: the launcher's Ended record): the OOM line when the
                          kernel's OOM killer ended the container, or None
    mgr.stats()           --stats: one line read from the leaf (call before remove())
    mgr.remove()          every exit path; idempotent; also cleans leaves of dead run.py instances

Where the leaf goes (discover.py):
  (a) run.py already alone in a delegated cgroup it may write (a `systemd-run --user --scope -p Delegate=yes`
      or a user service with Delegate=): P moves itself to `CG/pirun-<id>-run`, the container gets `CG/pirun-<id>`.
  (b) `cgroup_base` of the host configuration on a host without systemd: leaves `BASE/pirun-<pid>-<starttime>`;
      run.py must already run inside BASE's subtree (moving a process needs write access to cgroup.procs of
      the common ancestor), else a CgroupError says so.
  (c) systemd hosts (systemd.py, dbus.py): run.py asks the user's systemd over D-Bus for a transient delegated
      scope `pirun-<id>.scope` holding run.py itself (StartTransientUnit, Delegate=yes, PIDs=[run.py], in slice
      S = cgroup_base's last component when it names a slice under user@UID.service; what
      `systemd-run --user --scope -p Delegate=yes` does, without a process start). run.py moves on to
      SCOPE/supervisor, the container gets SCOPE/container; systemd removes the scope when run.py exits.
  A cgroup is required (missing -> CgroupError, exit 125) when a limit or --stats is asked, or when the host
  configuration sets `pids_limit` or `cgroup_base`; otherwise only (a) is tried, and nothing is an error.
  Leaf names carry run.py's pid and start time, so leaves of dead run.py instances are recognised and removed.

Hot path (no limits, no --stats): at most one read of /proc/self/cgroup and one access(); nothing imported but os
until a cgroup is going to be used (then pids.py, for its DEFAULT_LIMIT, which create() imports anyway).
"""
import os

ROOT = "/sys/fs/cgroup"


def manager_for(limits, hostcfg=None):
    """The manager for these limits, or None when nothing is asked and nothing is cheaply available."""
    if not (limits.stats or limits.requested() or config_asks(hostcfg)):
        if not _own_cgroup_writable() or _pids_default(hostcfg) == 0:     # pids is imported only here
            return None
        return CgroupManager(limits, hostcfg, False)
    from runtime.cgroup import cpu, memory, pids
    for ctl in (memory, pids, cpu):
        ctl.check(limits)
    return CgroupManager(limits, hostcfg, True)


def config_asks(hostcfg):
    """The host configuration asks for cgroups (`pids_limit` or `cgroup_base` set): every container gets
    its cgroup and the default pids limit, and a host that cannot give them is an error (as `run.py --check`
    says: the cgroup items are then required)."""
    return hostcfg is not None and (getattr(hostcfg, "pids_limit", None) is not None
                                    or bool(getattr(hostcfg, "cgroup_base", None)))


def _pids_default(hostcfg):
    """hostconfig `pids_limit`: None/absent -> pids.DEFAULT_LIMIT, 0 or "max" -> no default limit, N -> N."""
    value = getattr(hostcfg, "pids_limit", None)
    if value is None:
        from runtime.cgroup.pids import DEFAULT_LIMIT
        return DEFAULT_LIMIT
    if value == "max":
        return 0
    return int(value)


def _own_cgroup_writable():
    """True when this process sits in a pure cgroup v2 hierarchy, in a cgroup whose procs it may write."""
    try:
        fd = os.open("/proc/self/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        text = os.read(fd, 4096).decode()
    finally:
        os.close(fd)
    if not text.startswith("0::/") or text.count("\n") != 1:
        return False        # hybrid or legacy hierarchy (v1 lines), or no cgroup at all
    return os.access(ROOT + text[3:-1].rstrip("/") + "/cgroup.procs", os.W_OK)


class CgroupManager:
    """See the module docstring. Heavy lifting is imported lazily from manager.py on create()."""

    def __init__(self, limits, hostcfg, required, probe=None, fs=None):
        self.limits = limits
        self.hostcfg = hostcfg
        self.required = required          # False: only the default pids limit; failures mean "no cgroup"
        self.pids_default = _pids_default(hostcfg)
        self.probe = probe                # discover.Probe (tests inject a fake host)
        self.fs = fs                      # fs.CgroupFS (tests inject a fake tree)
        self.state = None                 # manager.State once created

    def create(self):
        from runtime.cgroup.manager import create
        if self.state is None:
            self.state = create(self)

    def add(self, pid):
        if self.state is not None and self.state.leaf:
            from runtime.cgroup.manager import add
            add(self.state, pid)

    def release(self, pid):
        """P, once I has forked the container's PID 1: move I out of the leaf (best effort)."""
        if self.state is not None and self.state.leaf:
            from runtime.cgroup.manager import release
            release(self.state, pid)

    def result(self, ended):
        """`ended`: the launcher's Ended record."""
        if self.state is None or not self.state.leaf:
            return None
        from runtime.cgroup.manager import result
        return result(self.state, ended)

    def stats(self):
        if self.state is None or not self.state.leaf:
            return "stats: no cgroup"
        from runtime.cgroup.manager import stats
        return stats(self.state)

    def remove(self):
        if self.state is not None:
            from runtime.cgroup.manager import remove
            remove(self.state)

    @property
    def leaf(self):
        """The container's cgroup directory (absolute host path), or None."""
        return self.state.leaf if self.state is not None else None
