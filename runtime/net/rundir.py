"""Per-user directories of the network helpers: the --help cache and one private directory per container for
the helper's sockets (removed by the backend, and swept at the next start if P was SIGKILLed)."""
import os

from runtime.errors import NetworkError


def state_dir(kind="cache"):
    """A private per-user directory: $XDG_RUNTIME_DIR/pirun if usable, else ~/.cache/pirun for kind="cache";
    None when nothing fits (kind="run" without XDG_RUNTIME_DIR: the caller falls back to /tmp)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        d = xdg + "/pirun"
    elif kind == "cache":
        home = os.environ.get("XDG_CACHE_HOME") or (os.path.expanduser("~") + "/.cache")
        d = home + "/pirun"
    else:
        return None
    try:
        os.makedirs(d, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return d


def private_run_dir(prefix):
    """A fresh 0700 directory for one container's sockets; the caller removes it in stop()."""
    base = state_dir("run")
    if base is None:
        base = "/tmp"
    _sweep(base, prefix)
    for _ in range(100):
        d = f"{base}/{prefix}-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.mkdir(d, 0o700)
            return d
        except FileExistsError:
            continue
    raise NetworkError(f"create a private directory under {base}: File exists")


def _sweep(base, prefix):
    """Remove directories left by a P that was SIGKILLed in the few ms they exist (named PREFIX-PID-RANDOM)."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) == 3 and parts[0] == prefix and parts[1].isdigit() and not os.path.exists(f"/proc/{parts[1]}"):
            remove_tree(f"{base}/{name}")


def remove_tree(d):
    """Remove a directory made by private_run_dir (flat: sockets and small files only)."""
    if not d:
        return
    try:
        for name in os.listdir(d):
            try:
                os.unlink(d + "/" + name)
            except OSError:
                pass
        os.rmdir(d)
    except OSError:
        pass
