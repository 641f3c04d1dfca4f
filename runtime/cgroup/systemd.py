"""The transient-scope path for systemd hosts (what podman does for rootless containers).

A process in an SSH session scope (user-UID.slice/session-N.scope) cannot move anything into the user
manager's subtree (user@UID.service/...): that needs write access to cgroup.procs of the common ancestor,
user-UID.slice, which belongs to root. Only systemd can: the user manager asks the system manager, which moves
processes of the same user. So, in create(), before fork:

1. run.py (P) asks the user manager over D-Bus (dbus.py, no subprocess) for a transient scope
   `pirun-<pid>-<start>.scope` with Delegate=yes and PIDs=[P] (StartTransientUnit), and waits for the job;
   P is now the scope's only process, and the scope's directory belongs to the user.
2. P moves itself one level down, to SCOPE/supervisor (the no-internal-process rule: SCOPE must hold no
   process to enable controllers for its children), enables the controllers on SCOPE, creates and fills the
   leaf SCOPE/container.
3. add(I): I, forked by P, starts in SCOPE/supervisor; moving it to SCOPE/container is a plain write (the common
   ancestor is SCOPE, which the user owns).
4. When P exits (normally, or killed by -9: I and C die by PDEATHSIG), the scope is empty and systemd removes
   it with every sub-cgroup (CollectMode=inactive-or-failed, like `systemd-run --collect`). Nothing to clean
   up by hand, and nothing left by a killed run.py.

P itself need not stay in the session scope: podman moves itself the same way. The supervisor leaf has no
limits, so the runtime's own memory is never charged to the container.
"""
import os

from runtime.errors import CgroupError


class Scope:
    def __init__(self, unit, cgroup, holder_pid):
        self.unit = unit              # "pirun-123-456.scope"
        self.cgroup = cgroup          # cgroup path relative to the mount: "/user.slice/.../pirun-123-456.scope"
        self.holder_pid = holder_pid  # the process that created the scope and sits in it: run.py itself


def own_cgroup(pid="self"):
    """The cgroup v2 path of `pid` (relative to the mount), or None."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    return None


def start_scope(unit, slice_=None):
    """Move run.py into a new transient delegated scope of the user's manager; returns the Scope."""
    from runtime.cgroup.dbus import start_transient_scope
    pid = os.getpid()
    start_transient_scope(unit, [pid], slice_, description=f"pirun container of run.py pid {pid}")
    try:
        cgroup = own_cgroup()
    except OSError as e:
        raise CgroupError(f"cgroup scope {unit}: reading /proc/self/cgroup: {e.strerror}") from None
    if not cgroup or not cgroup.rstrip("/").endswith("/" + unit):
        raise CgroupError(f"cgroup scope {unit}: run.py is in {cgroup!r} after StartTransientUnit, not in the "
                          "new scope")
    return Scope(unit, cgroup.rstrip("/"), pid)
