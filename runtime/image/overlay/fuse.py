"""fuse-overlayfs, the fallback where the kernel's overlayfs cannot be mounted unprivileged.

Started by the container's PID 1 before pivot_root, inside the container's user and mount namespaces: it
mounts, daemonises (its first process exits once the mount is ready) and stays in the container's PID
namespace, so it ends with the container, also after kill -9 of the launcher.
"""
import os

from runtime.errors import SetupError

FIX = "apt-get install fuse-overlayfs and let users open /dev/fuse (mode 0666, as Debian's fuse3 sets it)"


def usable():
    from runtime.tools import find as find_tool
    if find_tool("fuse-overlayfs") is None:
        raise SetupError("fuse-overlayfs not found", fix=FIX)
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise SetupError("/dev/fuse cannot be opened by this user", fix=FIX)


def mount(lowers, upper, work, target, volatile=False):
    from runtime.tools import find as find_tool
    from runtime.image.overlay import options
    tool = find_tool("fuse-overlayfs")
    if tool is None:
        raise SetupError("mount the image's overlay: fuse-overlayfs not found", fix=FIX)
    _, opts = options(lowers, upper, work, relative=False)
    if volatile and upper is not None:
        opts += ",fsync=0"
    r, w = os.pipe()
    pid = os.posix_spawn(tool, [tool, "-o", opts, target], {"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
                         file_actions=[(os.POSIX_SPAWN_DUP2, w, 2), (os.POSIX_SPAWN_CLOSE, r)])
    os.close(w)
    with os.fdopen(r, "rb") as f:
        err = f.read(4096).decode(errors="replace").strip()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SetupError(f"mount the image's overlay with fuse-overlayfs on {target}: "
                         f"{err.splitlines()[-1] if err else 'exit status ' + str(status)}", fix=FIX)
