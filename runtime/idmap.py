"""User namespace ID maps, written by the launcher for process I.

With newuidmap/newgidmap and /etc/subuid, /etc/subgid ranges (what the pirun_prereqs role sets up), the invoking
user becomes 0 and container IDs 1..N map onto the subordinate ranges, as podman does. Otherwise only the user
is mapped (to 0), with a one-line warning: chown to other IDs fails then.

newuidmap and newgidmap are found by runtime/tools.py (system directories only, never $PATH); `run.py --check`
uses the same lookup, the same parser and this very write_maps() on a test namespace.
"""
import os

from runtime import tools
from runtime.errors import IdMapError

SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"


def subid_ranges(path, user, uid):
    """[(start, count)] for `user` (by name or numeric id) in /etc/subuid or /etc/subgid."""
    ranges = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) != 3 or parts[0] not in (user, str(uid)):
                    continue
                try:
                    start, count = int(parts[1]), int(parts[2])
                except ValueError:
                    continue
                if start >= 0 and count > 0:
                    ranges.append((start, count))
    except OSError:
        pass
    return ranges


def _map_args(own, ranges):
    """newuidmap arguments: own id -> 0, then the ranges one after the other from 1."""
    args = ["0", str(own), "1"]
    inside = 1
    for start, count in ranges:
        args += [str(inside), str(start), str(count)]
        inside += count
    return args


def _run(tool, pid, args):
    """Run newuidmap/newgidmap; return None on success, else its message (stderr or exit status)."""
    r, w = os.pipe()
    try:
        actions = [(os.POSIX_SPAWN_DUP2, w, 2), (os.POSIX_SPAWN_CLOSE, r)]
        child = os.posix_spawn(tool, [tool, str(pid)] + args, {"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
                               file_actions=actions)
    except OSError as e:
        os.close(r)
        os.close(w)
        return f"{tool}: {e.strerror}"
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read(4096).decode(errors="replace").strip()
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return err.splitlines()[-1] if err else f"{os.path.basename(tool)} exited with status {os.waitstatus_to_exitcode(status)}"


def _write(path, text):
    from runtime.fs import write_file
    try:
        write_file(path, text)
    except OSError as e:
        raise IdMapError(f"write {path}: {e.strerror}",
                         fix="allow unprivileged user namespaces (the pirun_prereqs role; see run.py --check)")


class IdMapping:
    """How IDs were mapped: `warning` is None with the subordinate ranges, else the one-line warning of the
    single mapping."""
    __slots__ = ("warning",)

    def __init__(self, warning):
        self.warning = warning


def write_maps(pid, uid, gid, user):
    """Write the uid/gid maps of process `pid` (just after it unshared CLONE_NEWUSER)."""
    uid_ranges = subid_ranges(SUBUID, user, uid)
    gid_ranges = subid_ranges(SUBGID, user, uid)
    newuidmap, newgidmap = tools.find("newuidmap"), tools.find("newgidmap")
    problem = None
    if not (newuidmap and newgidmap):
        problem = "newuidmap/newgidmap not found (Debian package uidmap)"
    elif uid == 0:
        problem = None if uid_ranges and gid_ranges else f"root has no {SUBUID} or {SUBGID} range"
    elif not uid_ranges:
        problem = f"no {SUBUID} range for {user}"
    elif not gid_ranges:
        problem = f"no {SUBGID} range for {user}"
    uid_done = False
    if problem is None:
        problem = _run(newuidmap, pid, _map_args(uid, uid_ranges))
        if problem is None:
            uid_done = True
            problem = _run(newgidmap, pid, _map_args(gid, gid_ranges))
            if problem is None:
                return IdMapping(None)
    # Single mapping: the user is 0 inside, nothing else is mapped.
    if not uid_done:
        _write(f"/proc/{pid}/uid_map", f"0 {uid} 1\n")
    _write(f"/proc/{pid}/setgroups", "deny\n")
    _write(f"/proc/{pid}/gid_map", f"0 {gid} 1\n")
    warning = (f"{problem}: only your own user is mapped (as root); files owned by other IDs in the rootfs "
               f"show as nobody and chown to them fails; fix: run the pirun_prereqs role, or: "
               f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}")
    return IdMapping(warning)
