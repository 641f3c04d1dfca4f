"""Find a cgroup v2 subtree this user may use, or say exactly why there is none and how to fix it.

Order (see the package docstring): on a host without systemd, the host configuration's `cgroup_base`; run.py's
own cgroup when it is delegated and run.py is alone in it; on systemd hosts, a transient delegated scope
(systemd.py), in the slice named by `cgroup_base` if any. Only the own cgroup is tried when nothing is required.
The host is read through `Probe`, so tests can describe a fake host (cgroup files, mounts, systemd, a Pi).
"""
import os

from runtime.cgroup.fs import CgroupFS
from runtime.errors import CgroupError

ROLE = "pirun_cgroup"
ROLE_FIX = (f"run the {ROLE} Ansible role on this host (unified cgroup v2 hierarchy; delegates cpu cpuset io "
            "memory pids to users), then log in again")
PI_MEMORY_FIX = "on a Raspberry Pi add cgroup_enable=memory to /boot/firmware/cmdline.txt and reboot"


class Probe:
    """What discovery reads about this host. Every method is one small read; override for tests."""

    def __init__(self, fs=None):
        self.fs = fs or CgroupFS()

    def proc_cgroup(self, pid="self"):
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                return f.read()
        except OSError:
            return ""

    def mountinfo(self):
        try:
            with open("/proc/self/mountinfo") as f:
                return f.read()
        except OSError:
            return ""

    def systemd_booted(self):
        return os.path.isdir("/run/systemd/system")       # sd_booted()

    def is_pi(self):
        try:
            with open("/proc/device-tree/model", "rb") as f:
                return b"Raspberry Pi" in f.read()
        except OSError:
            return False

    def pid(self):
        return os.getpid()

    def uid(self):
        return os.getuid()

    def start_time(self, pid="self"):
        """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None if PID is gone."""
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            return None
        try:
            return int(data[data.rindex(b")") + 2:].split()[19])
        except (ValueError, IndexError):
            return None

    def start_scope(self, unit, slice_=None):
        from runtime.cgroup.systemd import start_scope
        return start_scope(unit, slice_)


class Base:
    """Where leaves go. kind: 'config' | 'own' | 'systemd' (path filled in once the scope exists)."""

    def __init__(self, kind, path, own, mount="/sys/fs/cgroup", slice_=None):
        self.kind = kind
        self.slice = slice_   # systemd: the user manager's slice for the scope (None: systemd's default)
        self.path = path      # absolute directory of the delegated base cgroup
        self.own = own        # absolute directory of run.py's own cgroup
        self.mount = mount    # where the cgroup2 hierarchy is mounted

    def __repr__(self):
        return f"Base({self.kind!r}, {self.path!r}, own={self.own!r})"


def parse_proc_cgroup(text):
    """/proc/PID/cgroup -> (v2 path or None, {v1 controller: path})."""
    v2, v1 = None, {}
    for line in text.splitlines():
        hid, _, rest = line.partition(":")
        ctls, _, path = rest.partition(":")
        if hid == "0" and ctls == "":
            v2 = path
        else:
            for c in ctls.split(","):
                if c and not c.startswith("name="):
                    v1[c] = path
    return v2, v1


def cgroup2_mount(mountinfo):
    """The mount point of the cgroup2 filesystem (the first one; /sys/fs/cgroup preferred), or None."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        if right.split(" ", 1)[0] == "cgroup2":
            fields = left.split()
            if len(fields) >= 5 and fields[3] == "/":
                found.append(fields[4].replace("\\040", " "))
    if "/sys/fs/cgroup" in found:
        return "/sys/fs/cgroup"
    return found[0] if found else None


def common_ancestor(a, b):
    pa, pb = a.rstrip("/").split("/"), b.rstrip("/").split("/")
    n = 0
    while n < min(len(pa), len(pb)) and pa[n] == pb[n]:
        n += 1
    return "/".join(pa[:n]) or "/"


def is_within(path, base):
    path, base = path.rstrip("/"), base.rstrip("/")
    return path == base or path.startswith(base + "/")


def unusable(controllers, reason, probe, fix=None):
    """The CgroupError for requested controllers that cannot be had: names them, the reason, the fix."""
    names = sorted(c for c in controllers if c != "cgroup")
    if names:
        subject = f"cgroup {' '.join(names)} controller{'s' if len(names) > 1 else ''}"
    else:
        subject = "cgroup for --stats"
    if fix is None:
        fix = ROLE_FIX
        if "memory" in controllers and probe.is_pi():
            fix = f"{fix}; {PI_MEMORY_FIX}"
    return CgroupError(f"{subject}: {reason}", fix)


def find(probe, hostcfg, wanted, required, expand):
    """A Base, or None (nothing usable and nothing required). Raises CgroupError when required.

    wanted: the controllers the requested limits need (for the messages)."""
    fs = probe.fs
    mount = cgroup2_mount(probe.mountinfo())
    v2, v1 = parse_proc_cgroup(probe.proc_cgroup())
    bound_v1 = sorted(c for c in wanted if c in v1)

    def fail(reason, fix=None):
        if not required:
            return None
        raise unusable(wanted or {"cgroup"}, reason, probe, fix)

    if mount is None or v2 is None:
        return fail("this host has no cgroup v2 hierarchy (cgroup2 is not mounted)")
    own = mount + v2.rstrip("/") if v2 != "/" else mount

    if bound_v1:
        fix = (f"run the {ROLE} Ansible role and reboot (it switches the host to the unified cgroup v2 "
               "hierarchy: systemd.unified_cgroup_hierarchy=1 on systemd hosts, cgroup_no_v1=all otherwise)")
        if "memory" in bound_v1 and probe.is_pi():
            fix = f"{fix}; {PI_MEMORY_FIX}"
        return fail(f"bound to cgroup v1 on this host (hybrid hierarchy: {', '.join(bound_v1)} not available "
                    "in cgroup v2); pirun needs the unified cgroup v2 hierarchy", fix)

    systemd = probe.systemd_booted()
    cfg = getattr(hostcfg, "cgroup_base", None)
    base = expand(cfg) if cfg else None
    if base and not systemd:
        if not is_within(base, mount):
            return fail(f"cgroup_base {base} from the host configuration is not under the cgroup2 mount {mount}")
        if not fs.isdir(base):
            return fail(f"cgroup_base {base} from the host configuration does not exist")
        for name in ("", "/cgroup.procs", "/cgroup.subtree_control"):
            if not fs.writable(base + name):
                return fail(f"cgroup_base {base + name} is not writable by uid {probe.uid()} (not delegated)")
        anc = common_ancestor(own, base)
        if not fs.writable(anc + "/cgroup.procs"):
            return fail(f"run.py runs in {own}, outside cgroup_base {base}; moving the container there needs "
                        f"write access to {anc}/cgroup.procs, which uid {probe.uid()} does not have",
                        f"start run.py from a session placed inside {base} (the {ROLE} role's session setup)")
        return Base("config", base, own, mount)

    if own != mount and own_is_delegated(fs, own, probe.pid()):
        return Base("own", own, own, mount)
    if not required:
        return None
    if not systemd:
        return fail(f"no delegated cgroup for uid {probe.uid()}: run.py's cgroup {own} is not writable, no "
                    "cgroup_base is configured and the host does not run systemd")
    slice_ = None
    if base:
        if not (is_within(base, f"{mount}/user.slice") and "/user@" in base):
            return fail(f"cgroup_base {base} from the host configuration is not in a user's systemd subtree "
                        "(user@UID.service); on a systemd host pirun only uses cgroups delegated by systemd",
                        f"set cgroup_base = {mount}/user.slice/user-{{uid}}.slice/user@{{uid}}.service/"
                        "pirun.slice, or remove it")
        last = os.path.basename(base)
        slice_ = last if last.endswith(".slice") else None
    return Base("systemd", None, own, mount, slice_)


def own_is_delegated(fs, own, pid):
    """run.py may manage its own cgroup (never the hierarchy's root): writable, and run.py alone in it."""
    if not fs.writable(own):
        return False
    if not (fs.writable(own + "/cgroup.procs") and fs.writable(own + "/cgroup.subtree_control")):
        return False
    procs = (fs.read(own + "/cgroup.procs") or "").split()
    return procs == [str(pid)]
