"""A recording double of runtime.syscalls.Syscalls: records every call in order and performs none.

    rec = RecordingSyscalls(fail=lambda call: errno.EPERM if call[:2] == ("mount", "sysfs") else None)
    Init(spec, plan, chan, syscalls=rec).apply_step(step)
    rec.calls   ->  [("mount", "/r", "/r", None, MS_BIND | MS_REC, None), ("pivot_root", ".", "."), ...]

A call is a tuple: its name, then its arguments (a mount target given as /proc/self/fd/N is recorded as the
path it stands for, the `shown` argument). `fail(call)` may return an errno: the call then raises the
SetupError the real one would (step, object, errno). execve succeeds for every path unless `programs` lists
the paths that exist (then others raise ENOENT); like exit, it records and returns.
"""
import errno
import os

from runtime.errors import os_error


class RecordingSyscalls:
    def __init__(self, fail=None, programs=None):
        self.calls = []
        self.fail = fail
        self.programs = programs

    def _record(self, call, step, obj):
        self.calls.append(call)
        err = self.fail(call) if self.fail else None
        if err:
            raise os_error(step, obj, err)

    def names(self):
        return [c[0] for c in self.calls]

    # --- the surface, in runtime/syscalls.py's order ---------------------------------------------------
    def mount(self, source, target, fstype, flags, data=None, step=None, shown=None):
        self._record(("mount", source, shown or target, fstype, flags, data), step or "mount", shown or target)

    def umount2(self, target, flags, step="umount"):
        self._record(("umount2", target, flags), step, target)

    def pivot_root(self, new_root, put_old):
        self._record(("pivot_root", new_root, put_old), "pivot_root", new_root)

    def prctl(self, option, arg2=0, arg3=0, arg4=0, arg5=0, step="prctl"):
        self._record(("prctl", option, arg2), step, None)

    def capset(self, effective, permitted, inheritable):
        self._record(("capset", effective, permitted, inheritable), "capset", None)

    def set_name(self, name):
        self.calls.append(("set_name", name))

    def setsid(self):
        self._record(("setsid",), "setsid", None)

    def execve(self, path, argv, env):
        self.calls.append(("execve", path, tuple(argv), dict(env)))
        if self.programs is not None and path not in self.programs:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)

    def exit(self, status):
        self.calls.append(("exit", status))

    def chdir(self, path, step="chdir", fix=None):
        self._record(("chdir", path), step, path)

    def mkdir(self, path, mode, step="mkdir"):
        self._record(("mkdir", path, mode), step, path)

    def symlink(self, target, path, step="symlink"):
        self._record(("symlink", target, path), step, path)

    def write_new(self, path, text, mode, step="create", shown=None):
        self._record(("write_new", path, text, mode), step, shown or path)

    def write_existing(self, path, text, step="write", shown=None):
        self._record(("write_existing", path, text), step, shown or path)

    def unlink(self, path, step="unlink"):
        self._record(("unlink", path), step, path)

    def sethostname(self, name):
        self._record(("sethostname", name), "sethostname", name)

    def loopback_up(self):
        self._record(("loopback_up",), "bring up", "lo")

    def reset_signals(self):
        self.calls.append(("reset_signals",))

    def open_pty(self):
        """A pipe stands in for the pty pair: real fds, so the SETUP message can carry one."""
        self.calls.append(("open_pty",))
        return os.pipe()

    def attach_terminal(self, slave):
        self.calls.append(("attach_terminal",))
        os.close(slave)

    def switch_user(self, uid, gid):
        self._record(("switch_user", uid, gid), f"switch to user {uid}:{gid}", None)
        return uid != 0

    def rearm_parent_death(self, parent_fd):
        self._record(("rearm_parent_death",), "set the parent-death signal again", None)

    def close_fds(self, *keep):
        self.calls.append(("close_fds",) + keep)

    def install_seccomp(self):
        self._record(("install_seccomp",), "install the seccomp filter", None)
