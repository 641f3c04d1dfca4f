"""rm -rf relative to a directory fd, never following a symlink (layers, writable layers, scratch).

Small on purpose (no imports beyond os and errno): process I of every container of an image removes its writable layer with
it, on the path between the container's end and the exit status reaching the caller.
"""
import errno
import os

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree_at(dfd, name):
    """rm -rf name relative to the directory fd dfd, never following symlinks."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            os.unlink(name, dir_fd=dfd)
            return
        raise
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for n, is_dir in entries:
            if is_dir:
                remove_tree_at(fd, n)
            else:
                os.unlink(n, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dfd)
