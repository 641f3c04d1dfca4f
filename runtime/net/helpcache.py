"""A helper's `--help` text, cached per user, so that probing its flags does not spawn it on every start."""
import os

from runtime.errors import NetworkError
from runtime.net.rundir import state_dir
from runtime.net.spawn import run_capture


def probe_help(path, tool):
    """`<path> --help` output, cached per user in a file keyed by the binary's path, mtime, size and inode, so
    that a start does not spawn the tool twice. The cache is written atomically (temp file + rename)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise NetworkError(f"{tool}: stat {path}: {e.strerror}", fix=f"install {tool}") from None
    key = f"{path}\0{st.st_mtime_ns}\0{st.st_size}\0{st.st_ino}\n"
    d = state_dir("cache")
    cache = f"{d}/{tool}-help" if d else None
    if cache:
        try:
            with open(cache, encoding="utf-8", errors="replace") as f:
                data = f.read()
            if data.startswith(key):
                return data[len(key):]
        except OSError:
            pass
    text = run_capture([path, "--help"], tool)
    if cache:
        tmp = f"{cache}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(key + text)
            os.replace(tmp, cache)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return text
