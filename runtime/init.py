"""The container side, process C: PID 1 of the new PID namespace.

Applies the planned steps (mounts, pivot_root, hostname, lo), reports SETUP, waits for GO (network ready,
terminal set up), drops capabilities, sets no_new_privs and execs the command, or with --init forks it and
stays as a reaper. Every failure is sent back to the launcher as a typed error and C exits. Every effect goes
through the syscall surface `Init` is given (runtime/syscalls.py), so that unit tests can record the order.
"""
import errno
import os
import stat
import _signal

from runtime import steps as S, sync
from runtime.errors import EXIT_CANNOT_EXEC, EXIT_NOT_FOUND, ExecError, SetupError, os_error
from runtime.fs import fd_path, open_in_root, open_link_in_root, require_real_dir
from runtime.libc import (MNT_DETACH, MS_BIND, MS_NOATIME, MS_NODEV, MS_NODIRATIME, MS_NOEXEC, MS_NOSUID,
                          MS_RDONLY, MS_REC, MS_RELATIME, MS_REMOUNT, MS_SLAVE, MS_STRICTATIME, PR_CAP_AMBIENT,
                          PR_CAP_AMBIENT_CLEAR_ALL, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS)
from runtime.signals import FORWARDED
from runtime.syscalls import Syscalls

_ST_TO_MS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
             (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))


def remount_read_only(sc, path, step, shown=None):
    """Read-only bind remount that keeps the flags the kernel locks in a user namespace."""
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    try:
        f = os.statvfs(path).f_flag
    except OSError as e:
        raise os_error(step, shown or path, e.errno) from None
    for st_flag, ms_flag in _ST_TO_MS:
        if f & st_flag:
            flags |= ms_flag
    sc.mount(None, path, None, flags, step=f"{step}: remount read-only", shown=shown)


def step_name(step):
    """What a step does, for an error that does not say: MountDev -> "mount dev"."""
    name = type(step).__name__
    return "".join(" " + c.lower() if c.isupper() else c for c in name).strip()


class Init:
    """C's work. `syscalls` is the surface every effect goes through (runtime.syscalls; tests: a recording
    double); the default costs nothing over calling libc and os directly."""

    def __init__(self, spec, plan, chan, syscalls=None, parent_fd=None):
        self.spec = spec
        self.plan = plan
        self.chan = chan
        self.sc = syscalls or Syscalls()
        self.parent_fd = parent_fd             # read end of a pipe only process I writes to: EOF when I is gone
        self.root = spec.rootfs
        self.root_fd = None
        self.dev_fd = None                     # the /dev tmpfs (MountDev), for the generated /etc files
        self.doing = "start the container"     # a step or a phase: names an error that does not (a raw OSError)

    # --- steps -------------------------------------------------------------------------------------------
    def apply_step(self, step):
        root, sc = self.root, self.sc
        match step:
            case S.MakeRslave():
                sc.mount(None, "/", None, MS_REC | MS_SLAVE, step="make / rslave:")
            case S.BindRootfs(path=path):
                sc.mount(path, path, None, MS_BIND | MS_REC, step="bind rootfs")
                self.root_fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            case S.MountOverlay():
                from runtime.image import overlay     # preloaded for containers of images (the only ones here)
                overlay.mount_step(step)
            case S.MountProc():
                target = require_real_dir(root, "proc", "mount proc")
                sc.mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, step="mount proc on")
            case S.MountDev():
                self._mount_dev(require_real_dir(root, "dev", "mount /dev"))
            case S.MountSys():
                target = require_real_dir(root, "sys", "mount /sys")
                try:
                    sc.mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                             step="mount sysfs on")
                except SetupError:
                    # not permitted without a network namespace of our own (--net host): bind it read-only
                    sc.mount("/sys", target, None, MS_BIND | MS_REC, step="bind /sys on")
                    remount_read_only(sc, target, "/sys")
            case S.BindVolume(host=host, target=target, read_only=ro):
                fd = open_in_root(self.root_fd, target, f"volume {host}:{target}")
                try:
                    sc.mount(host, fd_path(fd), None, MS_BIND | MS_REC, step=f"volume {host} on", shown=target)
                finally:
                    os.close(fd)
                if ro:
                    # the old fd still names the directory under the new mount: look the target up again
                    fd = open_in_root(self.root_fd, target, f"volume {host}:{target}")
                    try:
                        remount_read_only(sc, fd_path(fd), "volume", shown=target)
                    finally:
                        os.close(fd)
            case S.WriteEtc(name=name, content=content):
                self._write_etc(name, content)
            case S.PivotRoot():
                sc.chdir(root, step="enter the rootfs")
                sc.pivot_root(".", ".")
                sc.umount2(".", MNT_DETACH, step="detach the old root")
                sc.chdir("/", step="enter the new root")
                os.close(self.root_fd)
                self.root = ""
                self.root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            case S.Sysctl(name=name, value=value):
                sc.write_existing("/proc/sys/" + name.replace(".", "/"), value, step="sysctl",
                                  shown=f"{name}={value}")
            case S.MaskPaths(paths=paths):
                for p in paths:
                    self._mask(p)
            case S.ReadOnlyPaths(paths=paths):
                for p in paths:
                    if os.path.lexists(p):
                        sc.mount(p, p, None, MS_BIND | MS_REC, step="bind read-only path")
                        remount_read_only(sc, p, "read-only path")
            case S.RemountRootReadOnly():
                remount_read_only(sc, "/", "--read-only /")
            case S.SetHostname(name=name):
                sc.sethostname(name)
            case S.LoopbackUp():
                sc.loopback_up()
            case _:
                raise SetupError(f"unknown setup step {step!r}")

    def _mount_dev(self, dev):
        sc = self.sc
        sc.mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k", step="mount tmpfs on")
        # The tmpfs itself, held before any volume can be bound over /dev: the generated /etc files are
        # written through it (_write_etc), never into a directory of the host's that a volume put there.
        self.dev_fd = os.open(dev, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for name in S.DEVICES:
            path = f"{dev}/{name}"
            sc.write_new(path, "", 0o666, step="create the bind target")
            sc.mount(f"/dev/{name}", path, None, MS_BIND, step=f"bind /dev/{name} on")
        sc.mkdir(f"{dev}/pts", 0o755, step="mkdir")
        opts = "newinstance,ptmxmode=0666,mode=620"
        if _gid_mapped(5):
            opts += ",gid=5"
        sc.mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, opts, step="mount devpts on")
        sc.symlink("pts/ptmx", f"{dev}/ptmx")
        sc.mkdir(f"{dev}/shm", 0o1777)
        sc.mount("shm", f"{dev}/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k",
                 step="mount tmpfs on")
        sc.mkdir(f"{dev}/mqueue", 0o755)
        sc.mount("mqueue", f"{dev}/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, step="mount mqueue on")
        sc.symlink("/proc/self/fd", f"{dev}/fd")
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            sc.symlink(f"/proc/self/fd/{i}", f"{dev}/{name}")

    def _write_etc(self, name, content):
        """Write the file into our /dev tmpfs (through the fd MountDev took of it: a volume bound over /dev is
        never written), bind it over /etc/<name>, unlink the source: nothing is written on disk and nothing
        is left behind, whatever happens to the container."""
        sc = self.sc
        try:
            fd = open_in_root(self.root_fd, f"/etc/{name}", "bind generated file on")
        except SetupError as e:
            if e.errno != errno.ENOENT:
                raise
            fd = open_link_in_root(self.root_fd, f"/etc/{name}", "bind generated file on")
            if fd is None:
                raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) and not stat.S_ISLNK(os.fstat(fd).st_mode):
                raise SetupError(f"/etc/{name} in the rootfs is not a regular file")
            src = f"{fd_path(self.dev_fd)}/.pirun-{name}"          # in the tmpfs MountDev mounted
            sc.write_new(src, content, 0o644, step=f"write the generated /etc/{name} to",
                         shown=f"/dev/.pirun-{name}")
            try:
                sc.mount(src, fd_path(fd), None, MS_BIND, step="bind generated file on", shown=f"/etc/{name}")
            finally:
                sc.unlink(src)
        finally:
            os.close(fd)

    def _mask(self, path):
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            self.sc.mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0,mode=555",
                          step="mask")
        else:
            self.sc.mount("/dev/null", path, None, MS_BIND, step="mask")

    # --- run ---------------------------------------------------------------------------------------------
    def run(self):
        """Execs the command or exits with the code of the failure: never returns (but with a test double,
        whose execve and exit do return)."""
        spec, chan, sc = self.spec, self.chan, self.sc
        try:
            _preload(spec)
            sc.set_name("pirun-init")
            sc.reset_signals()
            sc.setsid()                         # never share the caller's session (TIOCSTI, CVE-2017-5226)
            for step in self.plan:
                self.doing = step
                self.apply_step(step)
            self.doing = "start the command"
            if spec.tty:
                master, slave = sc.open_pty()
                chan.send(sync.SETUP, fds=(master,))
                os.close(master)
            else:
                chan.send(sync.SETUP)
            _, exec_fds = chan.expect(sync.GO, "wait for the launcher")
            for fd in exec_fds:              # the monitor's: closed by execve, which it sees as EOF
                os.set_inheritable(fd, False)
            if spec.tty:
                sc.attach_terminal(slave)
            sc.chdir(spec.workdir, step="workdir", fix="create it in the rootfs or choose another -w")
            keep = (chan.fileno(),) if self.parent_fd is None else (chan.fileno(), self.parent_fd)
            sc.close_fds(*keep, *exec_fds)
            drop_privileges(sc, spec.caps, spec.user, self.parent_fd)
            if spec.seccomp:
                sc.install_seccomp()
            env = dict(spec.env)
            if spec.init:
                reap(sc, spec.argv, env, chan, exec_fds)
            exec_command(sc, spec.argv, env)
        except BaseException as e:          # noqa: BLE001 - everything goes back to the launcher
            doing = self.doing if isinstance(self.doing, str) else step_name(self.doing)
            sc.exit(chan.send_error(e, doing))


def _preload(spec):
    """Import now what is used after pivot_root: from then on the host's Python library is out of reach."""
    import errno, fcntl, struct, _socket  # noqa: F401,E401
    from runtime import caps  # noqa: F401
    if spec.tty:
        import termios  # noqa: F401
    if spec.seccomp:
        from runtime import seccomp  # noqa: F401  (fails closed: no filter module, no container)
    if spec.overlay is not None:
        from runtime.image import overlay  # noqa: F401


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


def drop_privileges(sc, kept, user=None, parent_fd=None):
    from runtime import caps
    keep = set(kept)
    for cap in range(caps.last_cap() + 1):
        if cap not in keep:
            sc.prctl(PR_CAPBSET_DROP, cap, step=f"drop capability {cap} from the bounding set")
    sc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, step="clear ambient capabilities")
    if user is not None:
        non_root = sc.switch_user(*user)
        sc.rearm_parent_death(parent_fd)     # the new credentials cleared it: the container must still die with I
        if non_root:
            sc.prctl(PR_SET_NO_NEW_PRIVS, 1, step="set no_new_privs")
            return                       # a non-root uid: the kernel cleared the permitted and effective sets
    m = 0
    for cap in keep:
        m |= 1 << cap
    sc.capset(m, m, 0)                   # inheritable stays empty (CVE-2022-24769)
    sc.prctl(PR_SET_NO_NEW_PRIVS, 1, step="set no_new_privs")


def exec_command(sc, argv, env):
    """execvp with the container's PATH. Written out because os.execvpe imports `warnings`, and after
    pivot_root no module can be imported any more. Raises ExecError: 127 when no candidate exists, 126 when
    one exists but cannot be executed (the first such error wins over "not found")."""
    name = argv[0]
    if "/" in name:
        candidates = [name]
    else:
        path = env.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
        candidates = [f"{d or '.'}/{name}" for d in path.split(":")]
    error = None
    for candidate in candidates:
        try:
            sc.execve(candidate, list(argv), env)
            return                          # only a test double's execve returns
        except OSError as e:
            if error is None or (error.errno in (errno.ENOENT, errno.ENOTDIR)
                                 and e.errno not in (errno.ENOENT, errno.ENOTDIR)):
                error = e
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        raise ExecError(f"{name}: command not found in the container", exit_code=EXIT_NOT_FOUND)
    fix = None
    if error.errno == errno.ENOEXEC:
        fix = ("a foreign-architecture rootfs needs qemu-user-static registered in binfmt_misc with the F "
               "flag (apt-get install qemu-user-static binfmt-support)")
    raise ExecError(f"{name}: cannot execute: {error.strerror}", fix, exit_code=EXIT_CANNOT_EXEC)


def reap(sc, argv, env, chan, exec_fds=()):
    """--init: PID 1 forwards signals to the command, reaps every orphan, exits with the command's status."""
    child = os.fork()
    if child == 0:
        try:
            sc.reset_signals()
            exec_command(sc, argv, env)
        except ExecError as e:
            sc.exit(chan.send_error(e, "start the command"))
    for fd in exec_fds:                      # the command's exec closes its copy
        os.close(fd)
    sc.set_name("pirun-reaper")
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
            sc.exit(0)
        if pid == child:
            if os.WIFSIGNALED(status):
                sc.exit(128 + os.WTERMSIG(status))
            sc.exit(os.WEXITSTATUS(status))
