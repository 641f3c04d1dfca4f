"""Path handling inside a rootfs that may be hostile.

`open_in_root` resolves a container path one component at a time with openat(O_PATH|O_NOFOLLOW), following
symlinks as if the rootfs were `/` (absolute links restart at the rootfs, `..` stops at it), and returns an
O_PATH fd. Mounting onto `/proc/self/fd/N` then lands exactly on that object: a symlink planted in the rootfs
cannot redirect a mount to the host (the runc securejoin CVEs).
"""
import os
import stat

from runtime.errors import SetupError

_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_LINKS = 40


def open_in_root(root_fd, path, step):
    parts = [p for p in path.split("/") if p not in ("", ".")]
    stack = [os.dup(root_fd)]
    links = 0
    try:
        while parts:
            comp = parts.pop(0)
            if comp == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            try:
                fd = os.open(comp, _O_PATH, dir_fd=stack[-1])
            except OSError as e:
                err = SetupError(f"{step} {path}: {e.strerror} in the rootfs")
                err.errno = e.errno
                raise err from None
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink("", dir_fd=fd)
                finally:
                    os.close(fd)
                links += 1
                if links > _MAX_LINKS:
                    raise SetupError(f"{step} {path}: too many levels of symbolic links in the rootfs")
                if target.startswith("/"):
                    while len(stack) > 1:
                        os.close(stack.pop())
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts
                continue
            if parts and not stat.S_ISDIR(st.st_mode):
                os.close(fd)
                raise SetupError(f"{step} {path}: a component is not a directory in the rootfs")
            stack.append(fd)
        return stack.pop()
    finally:
        for fd in stack:
            os.close(fd)


def resolve_in_root(root, path):
    """Host path of `path` (as seen inside the tree `root`) with its symlinks resolved inside `root`, by
    `open_in_root`'s rules; None for a missing or dangling path or a loop. For building trees, not for mounts
    (a mount must go through the O_PATH fd itself)."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root_fd, path, "resolve")
    except SetupError:
        return None
    finally:
        os.close(root_fd)
    try:
        return os.readlink(fd_path(fd))
    finally:
        os.close(fd)


def write_file(path, text):
    """One write to an existing file (uid_map, a sysctl): no create, no truncate. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def fd_path(fd):
    return f"/proc/self/fd/{fd}"


def require_real_dir(root, name, step):
    """/proc, /dev and /sys must be plain directories of the rootfs, not symlinks."""
    path = f"{root}/{name}"
    try:
        st = os.lstat(path)
    except OSError as e:
        raise SetupError(f"{step}: /{name}: {e.strerror} in the rootfs",
                         fix=f"create the directory /{name} in the rootfs (python3 -m runtime.rootfs builds "
                             f"a complete one)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SetupError(f"{step}: /{name} in the rootfs is not a directory (a symlink is refused)")
    return path


def open_link_in_root(root_fd, path, step):
    """O_PATH fd of `path`'s last component itself when it is a symlink (its directory resolved inside the
    rootfs), or None. A dangling /etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf, as in Debian
    images, is mounted over rather than followed: the rootfs is not edited and nothing leaves it."""
    parent, _, name = path.rstrip("/").rpartition("/")
    if not name or name in (".", ".."):
        return None
    dfd = open_in_root(root_fd, parent or "/", step)
    try:
        fd = os.open(name, _O_PATH, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    if stat.S_ISLNK(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None
