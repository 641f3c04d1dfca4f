"""The container side, process C: PID 1 of the new PID namespace.

Applies the planned steps (mounts, pivot_root, hostname, lo), reports SETUP, waits for GO (network ready,
terminal set up), drops capabilities, sets no_new_privs and execs the command, or with --init forks it and
stays as a reaper. Every failure is sent back to the launcher as a typed error and C exits.
"""
import errno
import os
import stat
import _signal

from runtime import libc, steps as S, sync
from runtime.errors import EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, ExecError, SetupError
from runtime.fs import fd_path, open_in_root, open_link_in_root, require_real_dir, write_file
from runtime.libc import (MNT_DETACH, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT,
                          MS_SLAVE, MS_STRICTATIME, mount)

_ST_TO_MS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
             (os.ST_NOATIME, libc.MS_NOATIME), (os.ST_NODIRATIME, libc.MS_NODIRATIME),
             (os.ST_RELATIME, libc.MS_RELATIME))

# Signals forwarded by the --init reaper to the command.
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1,
             _signal.SIGUSR2, _signal.SIGWINCH)


def reset_signals():
    """Default dispositions for every signal: Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays
    ignored across execve (a classic container bug)."""
    for sig in range(1, _signal.NSIG):
        if sig in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            _signal.signal(sig, _signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass


def remount_read_only(path, step, shown=None):
    """Read-only bind remount that keeps the flags the kernel locks in a user namespace."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    try:
        f = os.statvfs(path).f_flag
    except OSError as e:
        raise SetupError(f"{step} {shown or path}: {e.strerror}") from None
    for st_flag, ms_flag in _ST_TO_MS:
        if f & st_flag:
            flags |= ms_flag
    mount(None, path, None, flags, step=f"{step}: remount read-only", shown=shown)


class Init:
    def __init__(self, spec, plan, chan):
        self.spec = spec
        self.plan = plan
        self.chan = chan
        self.root = spec.rootfs
        self.root_fd = None

    # --- steps -------------------------------------------------------------------------------------------
    def apply_step(self, step):
        root = self.root
        match step:
            case S.MakeRslave():
                mount(None, "/", None, MS_REC | MS_SLAVE, step="make / rslave:")
            case S.BindRootfs(path=path):
                mount(path, path, None, MS_BIND | MS_REC, step="bind rootfs")
                self.root_fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            case S.MountOverlay():
                from runtime.image.overlay import mount_step     # only containers of images get here
                mount_step(step)
            case S.MountProc():
                target = require_real_dir(root, "proc", "mount proc")
                mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, step="mount proc on")
            case S.MountDev():
                self._mount_dev(require_real_dir(root, "dev", "mount /dev"))
            case S.MountSys():
                target = require_real_dir(root, "sys", "mount /sys")
                try:
                    mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                          step="mount sysfs on")
                except SetupError:
                    # not permitted without a network namespace of our own (--net host): bind it read-only
                    mount("/sys", target, None, MS_BIND | MS_REC, step="bind /sys on")
                    remount_read_only(target, "/sys")
            case S.BindVolume(host=host, target=target, read_only=ro):
                fd = open_in_root(self.root_fd, target, f"volume {host}:{target}")
                try:
                    mount(host, fd_path(fd), None, MS_BIND | MS_REC, step=f"volume {host} on", shown=target)
                finally:
                    os.close(fd)
                if ro:
                    # the old fd still names the directory under the new mount: look the target up again
                    fd = open_in_root(self.root_fd, target, f"volume {host}:{target}")
                    try:
                        remount_read_only(fd_path(fd), "volume", shown=target)
                    finally:
                        os.close(fd)
            case S.WriteEtc(name=name, content=content):
                self._write_etc(name, content)
            case S.PivotRoot():
                os.chdir(root)
                libc.pivot_root(".", ".")
                libc.umount2(".", MNT_DETACH, step="detach the old root")
                os.chdir("/")
                os.close(self.root_fd)
                self.root = ""
                self.root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            case S.Sysctl(name=name, value=value):
                path = "/proc/sys/" + name.replace(".", "/")
                try:
                    write_file(path, value)
                except OSError as e:
                    raise SetupError(f"sysctl {name}={value}: {e.strerror}") from None
            case S.MaskPaths(paths=paths):
                for p in paths:
                    self._mask(p)
            case S.ReadOnlyPaths(paths=paths):
                for p in paths:
                    if os.path.lexists(p):
                        mount(p, p, None, MS_BIND | MS_REC, step="bind read-only path")
                        remount_read_only(p, "read-only path")
            case S.RemountRootReadOnly():
                remount_read_only("/", "--read-only /")
            case S.SetHostname(name=name):
                import _socket
                try:
                    _socket.sethostname(name)
                except OSError as e:
                    raise SetupError(f"sethostname {name}: {e.strerror}") from None
            case S.LoopbackUp():
                loopback_up()
            case _:
                raise SetupError(f"unknown setup step {step!r}")

    def _mount_dev(self, dev):
        mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k", step="mount tmpfs on")
        for name in S.DEVICES:
            path = f"{dev}/{name}"
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666))
            mount(f"/dev/{name}", path, None, MS_BIND, step=f"bind /dev/{name} on")
        os.mkdir(f"{dev}/pts", 0o755)
        opts = "newinstance,ptmxmode=0666,mode=620"
        if _gid_mapped(5):
            opts += ",gid=5"
        mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, opts, step="mount devpts on")
        os.symlink("pts/ptmx", f"{dev}/ptmx")
        os.mkdir(f"{dev}/shm", 0o1777)
        mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k",
              step="mount tmpfs on")
        os.mkdir(f"{dev}/mqueue", 0o755)
        mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, step="mount mqueue on")
        os.symlink("/proc/self/fd", f"{dev}/fd")
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            os.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")

    def _write_etc(self, name, content):
        """Write the file into our /dev tmpfs, bind it over /etc/<name>, unlink the source: nothing is written
        on disk and nothing is left behind, whatever happens to the container."""
        try:
            fd = open_in_root(self.root_fd, f"/etc/{name}", "bind generated file on")
        except SetupError as e:
            if getattr(e, "errno", None) != errno.ENOENT:
                raise
            fd = open_link_in_root(self.root_fd, f"/etc/{name}", "bind generated file on")
            if fd is None:
                raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) and not stat.S_ISLNK(os.fstat(fd).st_mode):
                raise SetupError(f"/etc/{name} in the rootfs is not a regular file")
            src = f"{self.root}/dev/.pirun-{name}"
            wfd = os.open(src, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(wfd, content.encode())
            finally:
                os.close(wfd)
            try:
                mount(src, fd_path(fd), None, MS_BIND, step="bind generated file on", shown=f"/etc/{name}")
            finally:
                os.unlink(src)
        finally:
            os.close(fd)

    def _mask(self, path):
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0,mode=555",
                  step="mask")
        else:
            mount("/dev/null", path, None, MS_BIND, step="mask")

    # --- run ---------------------------------------------------------------------------------------------
    def run(self):
        """Never returns: execs the command or exits with the code of the failure."""
        spec, chan = self.spec, self.chan
        try:
            _preload(spec)
            libc.set_name("pirun-init")
            reset_signals()
            os.setsid()                         # never share the caller's session (TIOCSTI, CVE-2017-5226)
            for step in self.plan:
                self.apply_step(step)
            master = None
            if spec.tty:
                master, slave = open_pty()
                chan.send(sync.SETUP, fds=(master,))
                os.close(master)
            else:
                chan.send(sync.SETUP)
            chan.expect(sync.GO, "wait for the launcher")
            if spec.tty:
                attach_terminal(slave)
            try:
                os.chdir(spec.workdir)
            except OSError as e:
                raise SetupError(f"workdir {spec.workdir}: {e.strerror}",
                                 fix="create it in the rootfs or choose another -w") from None
            _close_inherited_fds(chan.fileno())
            drop_privileges(spec.caps, spec.user)
            if spec.seccomp:
                _seccomp()
            env = dict(spec.env)
            if spec.init:
                reap(spec.argv, env, chan)
            exec_command(spec.argv, env)
        except BaseException as e:          # noqa: BLE001 - everything goes back to the launcher
            code = chan.send_error(e)
            os._exit(code)


def _close_inherited_fds(keep):
    """Only stdin, stdout and stderr reach the command: close what the caller (or Python) left open above them.
    `keep` (the sync channel) is close-on-exec."""
    os.closerange(3, keep)
    os.closerange(keep + 1, 0x7FFFFFFF)     # one close_range(2); fds above 65535 exist (hard limit 524288)


def _preload(spec):
    """Import now what is used after pivot_root: from then on the host's Python library is out of reach."""
    import errno, fcntl, struct, _socket  # noqa: F401,E401
    from runtime import caps  # noqa: F401
    if spec.tty:
        import termios  # noqa: F401
    if spec.seccomp:
        from runtime import seccomp  # noqa: F401  (fails closed: no filter module, no container)


def _seccomp():
    import sys
    sys.modules["runtime.seccomp"].install()     # imported by _preload, before pivot_root


def _gid_mapped(gid):
    try:
        with open("/proc/self/gid_map") as f:
            for line in f:
                inside, _outside, count = (int(x) for x in line.split())
                if inside <= gid < inside + count:
                    return True
    except (OSError, ValueError):
        pass
    return False


def loopback_up():
    import fcntl
    import struct
    import _socket
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
    except OSError as e:
        raise SetupError(f"bring up lo: {e.strerror}") from None
    finally:
        s.close()


def open_pty():
    """A pseudo-terminal from the container's own devpts instance: the command's terminal is /dev/pts/0."""
    import fcntl
    import struct
    TIOCGPTN, TIOCSPTLCK = 0x80045430, 0x40045431
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0\0\0\0"))[0]
        slave = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
    except OSError as e:
        raise SetupError(f"open a pseudo-terminal: {e.strerror}") from None
    return master, slave


def attach_terminal(slave):
    import fcntl
    import termios
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def drop_privileges(kept, user=None):
    from runtime import caps
    keep = set(kept)
    for cap in range(caps.last_cap() + 1):
        if cap not in keep:
            libc.prctl(libc.PR_CAPBSET_DROP, cap, step=f"drop capability {cap} from the bounding set")
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL, step="clear ambient capabilities")
    if user is not None and switch_user(*user):
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1, step="set no_new_privs")
        return                           # a non-root uid: the kernel cleared the permitted and effective sets
    m = 0
    for cap in keep:
        m |= 1 << cap
    libc.capset(m, m, 0)                 # inheritable stays empty (CVE-2022-24769)
    libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1, step="set no_new_privs")


def switch_user(uid, gid):
    """-u / the image's User: setgroups, setgid, setuid (as podman: the bounding set stays, a non-root user
    has no permitted or effective capabilities). Returns True when the uid is not 0."""
    try:
        os.setgroups([gid])
        os.setgid(gid)
        os.setuid(uid)
    except OSError as e:
        raise SetupError(f"switch to user {uid}:{gid}: {e.strerror}",
                         fix="choose a user and group mapped in the container (your subordinate IDs)") from None
    return uid != 0


def exec_command(argv, env):
    """execvp with the container's PATH. Written out because os.execvpe imports `warnings`, and after
    pivot_root no module can be imported any more."""
    import errno
    name = argv[0]
    if "/" in name:
        candidates = [name]
    else:
        path = env.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
        candidates = [f"{d or '.'}/{name}" for d in path.split(":")]
    error = None
    for candidate in candidates:
        try:
            os.execve(candidate, list(argv), env)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                error = error or e
            else:
                error = e if error is None or error.errno in (errno.ENOENT, errno.ENOTDIR) else error
    e = error
    if True:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ExecError(f"{argv[0]}: command not found in the container", exit_code=EXIT_NOT_FOUND) from None
        fix = None
        if e.errno == errno.ENOEXEC:
            fix = ("a foreign-architecture rootfs needs qemu-user-static registered in binfmt_misc with the F "
                   "flag (apt-get install qemu-user-static binfmt-support)")
        raise ExecError(f"{argv[0]}: cannot execute: {e.strerror}", fix, exit_code=EXIT_CANNOT_EXEC) from None


def reap(argv, env, chan):
    """--init: PID 1 forwards signals to the command, reaps every orphan, exits with the command's status."""
    child = os.fork()
    if child == 0:
        try:
            reset_signals()
            exec_command(argv, env)
        except ExecError as e:
            os._exit(chan.send_error(e))
    libc.set_name("pirun-reaper")
    chan.close()

    def forward(sig, _frame):
        try:
            os.kill(child, sig)
        except OSError:
            pass

    for sig in FORWARDED:
        _signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if pid == child:
            if os.WIFSIGNALED(status):
                os._exit(128 + os.WTERMSIG(status))
            os._exit(os.WEXITSTATUS(status))
