"""Where pirun finds the host programs it runs: one lookup for the launcher (newuidmap, newgidmap), the network
backends (slirp4netns, pasta) and `run.py --check`, so that the check reports exactly the binary a run executes.

    find(name) -> absolute path or None

Search order, decided here and nowhere else:

* The setuid helpers (`SETUID_HELPERS`: newuidmap, newgidmap) come only from the system directories, in the
  order `/usr/bin /usr/sbin /bin /sbin /usr/local/bin /usr/local/sbin` (the distribution's own first); $PATH
  is not consulted. They only work when root installed them setuid root (or with file capabilities) in a
  directory only root can write, so a copy found earlier on the caller's $PATH (~/bin, a virtualenv, a
  directory another user can write) can only be a different, unprivileged program: mapping would fail and
  the container would silently get the single-ID fallback, or a wrapper would decide which maps are asked
  for. And $PATH differs between a login shell, sudo, runuser, cron and systemd units: a PATH lookup would
  let `--check` approve one binary while run.py executes another.
* Every other tool (slirp4netns, pasta) runs with the caller's own privileges, so the caller may choose it:
  the directories of $PATH in order (absolute entries only), then the system directories.

Hot path: `os` only.
"""
import os

SYSTEM_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/local/sbin")
SETUID_HELPERS = frozenset(("newuidmap", "newgidmap"))


def search_dirs(name, path=None):
    """The directories find() searches for `name`, in order. path: a $PATH value (default: the environment's)."""
    if name in SETUID_HELPERS:
        return SYSTEM_DIRS
    if path is None:
        path = os.environ.get("PATH") or ""
    dirs = []
    for d in path.split(":") + list(SYSTEM_DIRS):
        if d.startswith("/") and d not in dirs:
            dirs.append(d)
    return tuple(dirs)


def find(name, path=None):
    """Absolute path of the executable `name` that pirun runs, or None (see the module docstring)."""
    for d in search_dirs(name, path):
        p = d.rstrip("/") + "/" + name
        if os.access(p, os.X_OK) and not os.path.isdir(p):
            return p
    return None
