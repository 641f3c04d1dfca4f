"""Where a network helper's binary is: $PATH first, then the usual sbin/bin directories."""
import os

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_binary(name):
    """Absolute path of `name` on $PATH (then the usual sbin/bin directories), or None."""
    seen = set()
    for d in (os.environ.get("PATH") or "").split(":") + DEFAULT_PATH.split(":"):
        if not d or d in seen or not d.startswith("/"):
            continue
        seen.add(d)
        p = d + "/" + name
        if os.access(p, os.X_OK) and not os.path.isdir(p):
            return p
    return None
