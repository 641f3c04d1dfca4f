"""A container's root as an overlay of image layers plus its writable layer, behind one interface.

Drivers: `native` (the kernel's overlayfs mounted inside the container's user namespace with `userxattr`,
Linux 5.11 and later) and `fuse` (fuse-overlayfs, started inside the container's user and mount namespaces,
where it dies with the container's PID namespace). `choose_driver` probes native overlayfs once per store
(a test mount of two layers with a whiteout and an opaque directory, in a user namespace) and caches the
answer in ROOT/overlay-driver; PIRUN_OVERLAY_DRIVER=overlay|fuse-overlayfs forces one.

This module is imported by the container side (process C, before pivot_root; process I, before it forks
C): it imports nothing heavy.
"""
import errno
import os

from runtime.errors import SetupError
from runtime.image.tree import remove_tree_at

DRIVERS = ("overlay", "fuse-overlayfs")
NATIVE_FIX = "a kernel with unprivileged overlayfs (Linux 5.11 or later), or: apt-get install fuse-overlayfs"


def mount_step(step):
    """Process C, in the container's user and mount namespaces: mount the overlay on step.target, then make
    the volume targets the image lacks (in the writable layer)."""
    ov = step.overlay
    if ov.driver == "fuse-overlayfs":
        from runtime.image.overlay import fuse
        fuse.mount(ov.lowers, ov.upper, ov.work, step.target, ov.volatile)
    else:
        from runtime.image.overlay import native
        native.mount(ov.lowers, ov.upper, ov.work, step.target, ov.volatile)
    if ov.mkdirs:
        root_fd = os.open(step.target, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for path, is_dir in ov.mkdirs:
                ensure_path(root_fd, path, is_dir)
        finally:
            os.close(root_fd)


def ensure_path(root_fd, path, is_dir):
    """Create `path` (a directory, or an empty file when is_dir is False) inside the root if missing,
    resolving every existing component inside the root (fs.open_in_root)."""
    from runtime.fs import open_in_root
    try:
        os.close(open_in_root(root_fd, path, "volume target"))
        return
    except SetupError as e:
        if getattr(e, "errno", None) != errno.ENOENT:
            raise
    parent, _, name = path.rstrip("/").rpartition("/")
    if parent:
        ensure_path(root_fd, parent, True)
    pfd = open_in_root(root_fd, parent or "/", "volume target")
    try:
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=pfd)
        else:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=pfd))
    except FileExistsError:
        pass
    except OSError as e:
        raise SetupError(f"create volume target {path} in the container's writable layer: {e.strerror}") from None
    finally:
        os.close(pfd)


# A writable layer as prepare (runtime.image.container) and the kernel leave it: the files, then the
# directories deepest first (overlayfs makes work/work, and work/work/incompat/volatile/dirty for
# `volatile`). The lock goes last: the layer counts as in use until only its empty directory is left.
_LAYER_FILES = ("container.json", "work/work/incompat/volatile/dirty")
_LAYER_DIRS = ("work/work/incompat/volatile", "work/work/incompat", "work/work", "work", "merged", "upper")


def remove_layer_at(dir_fd, name):
    """Process I, after the container ended: remove its writable layer (files of any mapped ID). The known
    layout by name (a dozen system calls for a container that wrote nothing), what the container wrote (in
    upper) or anything unexpected by a walk that never follows a symlink."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            for path in _LAYER_FILES:
                _unlink(path, fd)
            for path in _LAYER_DIRS:
                try:
                    os.rmdir(path, dir_fd=fd)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno != errno.ENOTEMPTY:
                        raise
                    remove_tree_at(fd, path)
            _unlink("lock", fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=dir_fd)
    except OSError:
        try:
            remove_tree_at(dir_fd, name)             # something unexpected in it: the walk
        except OSError:
            pass                                     # left for the next pirun command (debris)
    finally:
        os.close(dir_fd)


def _unlink(path, dir_fd):
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def choose_driver(root):
    forced = os.environ.get("PIRUN_OVERLAY_DRIVER")
    if forced:
        if forced not in DRIVERS:
            from runtime.errors import SpecError
            raise SpecError(f"PIRUN_OVERLAY_DRIVER={forced}: unknown driver (choose {' or '.join(DRIVERS)})")
        if forced == "fuse-overlayfs":
            from runtime.image.overlay import fuse
            fuse.usable()
        return forced
    cache = f"{root}/overlay-driver"
    try:
        with open(cache) as f:
            driver = f.read().strip()
        if driver in DRIVERS:
            return driver
    except OSError:
        pass
    from runtime.image.overlay import native
    problem = native.probe(root)
    if problem is None:
        driver = "overlay"
    else:
        from runtime.image.overlay import fuse
        try:
            fuse.usable()
        except SetupError as e:
            raise SetupError(f"no overlay filesystem for the container: native overlayfs: {problem}; "
                             f"fuse-overlayfs: {e.message}",
                             fix=NATIVE_FIX + " and give users /dev/fuse") from None
        driver = "fuse-overlayfs"
    tmp = f"{cache}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(driver + "\n")
    os.rename(tmp, cache)
    return driver


def options(lowers, upper, work, relative=True):
    """mount options and the directory they are relative to (short relative paths keep the option string
    under the kernel's page-size limit for many layers)."""
    parent = os.path.dirname(os.path.dirname(lowers[0]))
    if relative and all(os.path.dirname(os.path.dirname(l)) == parent for l in lowers):
        names = [os.path.relpath(l, parent) for l in lowers]
    else:
        parent, names = "/", list(lowers)
    for p in names + [upper or "", work or ""]:
        if any(c in p for c in ",:\n"):
            raise SetupError(f"overlay: the path {p!r} contains ',' or ':'", fix="choose a --root without them")
    opts = "lowerdir=" + ":".join(names)
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}"
    return parent, opts
