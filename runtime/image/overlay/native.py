"""The kernel's overlayfs, mounted by an unprivileged user inside its user namespace (`userxattr`)."""
import os

from runtime import libc
from runtime.errors import SetupError


def mount(lowers, upper, work, target, volatile=False):
    from runtime.image.overlay import NATIVE_FIX, options
    parent, opts = options(lowers, upper, work)
    opts += ",userxattr"
    if volatile and upper is not None:
        opts += ",volatile"          # a throwaway layer: its unmount must not sync the host's filesystem
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.chdir(parent)
        flags = libc.MS_RDONLY if upper is None else 0
        libc.mount("overlay", target, "overlay", flags | libc.MS_NODEV, opts, step="mount the image's overlay on",
                   shown=target)
    except SetupError as e:
        e.fix = e.fix or NATIVE_FIX
        raise
    finally:
        os.fchdir(cwd)
        os.close(cwd)


def _probe_child(base):
    import stat
    for d in ("l1", "l2", "u", "w", "m"):
        os.mkdir(f"{base}/{d}")
    os.mkdir(f"{base}/l1/d")
    for p in ("l1/gone", "l1/d/hidden"):
        with open(f"{base}/{p}", "w") as f:
            f.write("x")
    os.mknod(f"{base}/l2/gone", stat.S_IFCHR | 0o600, 0)
    os.mkdir(f"{base}/l2/d")
    os.setxattr(f"{base}/l2/d", "user.overlay.opaque", b"y")
    mount([f"{base}/l2", f"{base}/l1"], f"{base}/u", f"{base}/w", f"{base}/m")
    seen = sorted(os.listdir(f"{base}/m")), os.listdir(f"{base}/m/d")
    with open(f"{base}/m/new", "w") as f:
        f.write("y")
    libc.umount2(f"{base}/m", 0)
    if seen != (["d"], []):
        return f"whiteouts or opaque directories not honoured (saw {seen})"
    return ""


def probe(root):
    """None if native overlayfs works for this user on this store's filesystem, else why not."""
    from runtime.image import userns
    from runtime.image.store import Store
    store = Store(root).open()
    lock = store.shared()               # the scratch directory is ours until removed: no debris for others
    try:
        base = store.tmpdir()
        try:
            problem = userns.run(_probe_child, base, mount_ns=True)
        except SetupError as e:
            problem = e.message
        finally:
            store.remove([base])
    finally:
        os.close(lock)
    return problem or None
