"""`pirun exec`: a new process inside a running container.

    pirun exec (host side, this process) --fork--> X ("pirun-exec") --fork--> Y, the command
      X  PR_SET_PDEATHSIG(SIGKILL); waits for GO (the host side has put it in the container's cgroup leaf);
         setns(pidfd of the container's PID 1, USER|MNT|PID|UTS|IPC|NET|CGROUP): every namespace the container
         has of its own, in one call, the user namespace first (Linux 5.8+); forks Y (a member of the PID
         namespace: setns takes effect for children) and reports how Y ended, as process I does for PID 1.
      Y  dies with X; its own session; a pseudo-terminal of the container's devpts with -t (the master goes
         to the host side, which relays it with runtime.terminal, in the launcher's one event loop); the
         working directory; -u USER[:GROUP] from the container's /etc/passwd; then exactly what the
         container's PID 1 got: its capability set, no_new_privs and the seccomp filter (runtime.init's
         drop_privileges, runtime.seccomp.install), and init's exec_command (127/126 as for run).
After setns the host's Python library is out of reach: X imports what Y will use first.
Signals sent to `pirun exec` (INT, TERM, HUP, QUIT, USR1, USR2) are forwarded to Y; WINCH resizes.
"""
import os
import _signal

from runtime import libc, sync
from runtime.errors import SetupError
from runtime.launcher import Launcher, _kill
from runtime.lifecycle import state
from runtime.libc import (CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER,
                          CLONE_NEWUTS)

_NAMESPACES = (("user", CLONE_NEWUSER), ("mnt", CLONE_NEWNS), ("pid", CLONE_NEWPID), ("uts", CLONE_NEWUTS),
               ("ipc", CLONE_NEWIPC), ("net", CLONE_NEWNET), ("cgroup", CLONE_NEWCGROUP))


def namespace_flags(pid):
    """The CLONE_NEW* flags of the namespaces process `pid` does not share with us (--net host shares one)."""
    flags = 0
    for name, flag in _NAMESPACES:
        try:
            if os.stat(f"/proc/{pid}/ns/{name}").st_ino != os.stat(f"/proc/self/ns/{name}").st_ino:
                flags |= flag
        except OSError as e:
            raise SetupError(f"exec: namespace {name} of PID {pid}: {e.strerror}") from None
    return flags


class Exec(Launcher):
    def __init__(self, c, argv, env, workdir, user, tty, interactive, warn):
        super().__init__(None, None, warn)
        from runtime.net import NetBackend
        self.backend = NetBackend(None)          # no helper of our own: nothing to watch but the channel
        self.container = c
        self.argv = tuple(argv)
        self.env = env
        self.workdir = workdir
        self.user = user
        self.tty = tty
        self.interactive = interactive

    def _on_signal(self, sig, _frame):
        if sig == _signal.SIGWINCH:
            if self.terminal is not None:
                self.terminal.resize()
            return
        if self.c_pid is not None:
            _kill(self.c_pid, sig)               # not a PID 1: the signal's default action applies inside
        elif sig != _signal.SIGWINCH:
            self.pending = sig
            if self.i_pid is not None:
                _kill(self.i_pid, _signal.SIGKILL)

    def run(self):
        c = self.container
        pidfd = c.pidfd("pid")
        if pidfd is None:
            raise state.Improper("can only create exec sessions on running containers: "
                                 "container state improper")
        cfg = c.config
        try:
            flags = namespace_flags(c.state["pid"])
            self._install_signals()
            parent, child = sync.Channel.pair()
            self.chan = parent
            null = None if (self.interactive or self.tty) else os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            me = os.getpid()
            pid = os.fork()
            if pid == 0:
                parent.close()
                if self.stdio is not None:                   # a health check's output pipe (health.py)
                    for target, fd in enumerate(self.stdio):
                        os.dup2(fd, target)
                _enter(child, me, pidfd, flags, self, cfg, null)          # never returns
                os._exit(125)
            self.i_pid = pid
            child.close()
            self._after_fork()
            os.close(pidfd)
            pidfd = None
            if null is not None:
                os.close(null)
            self._check_pending()
            leaf = c.state.get("cgroup")
            if leaf:
                _join_cgroup(leaf, pid)
            parent.send(sync.GO)
            fields, _ = parent.expect(sync.CHILD, "exec: enter the container")
            self.c_pid = int(fields[0])
            _, fds = parent.expect(sync.SETUP, "exec: set up the command")
            if self.tty:
                if not fds:
                    raise SetupError("exec: set up the terminal: no pseudo-terminal received")
                self.terminal = self._make_terminal(fds[0])
                self.terminal.start()
            parent.send(sync.GO)
            return self._wait()
        finally:
            if pidfd is not None:
                os.close(pidfd)
            self._cleanup()

    def _cleanup(self):
        if self.i_pid is not None and self.c_pid is not None and self.ended is None:
            # Y still runs (an error or a timeout on this side): end it and let X reap it and exit, rather
            # than SIGKILL X and orphan Y (see _enter)
            _kill(self.c_pid, _signal.SIGKILL)
            try:
                os.waitpid(self.i_pid, 0)
            except ChildProcessError:
                pass
            self.i_pid = None
        super()._cleanup()


def _join_cgroup(leaf, pid):
    """Move X (`pid`) into the container's cgroup leaf, so that what exec starts counts against its limits.

    From an SSH login, X sits in the session's scope (user-UID.slice/session-N.scope) and the common ancestor
    with the container's leaf (under user@UID.service) is root's: the write is refused. Then, as run.py does
    for itself (runtime/cgroup/systemd.py), the user's manager is asked for a transient scope holding this
    process and X, next to the container's scope: from there the move is the user's own."""
    from runtime.errors import CgroupError

    def move():
        fd = os.open(f"{leaf}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)

    fix = "moving a process needs write access to cgroup.procs of the common ancestor"
    try:
        move()
        return
    except PermissionError as e:
        first = e
    except OSError as e:
        raise CgroupError(f"exec: join the container's cgroup {leaf}: {e.strerror}", fix=fix) from None
    scope_dir = os.path.dirname(leaf.rstrip("/"))
    slice_ = os.path.basename(os.path.dirname(scope_dir))
    from runtime.cgroup.dbus import start_transient_scope
    me = os.getpid()
    try:
        start_transient_scope(f"pirun-exec-{me}-{pid}.scope", [me, pid],
                              slice_ if slice_.endswith(".slice") else None,
                              description=f"pirun exec into {os.path.basename(scope_dir)}")
        move()
    except CgroupError as e:
        raise CgroupError(f"exec: join the container's cgroup {leaf}: {first.strerror} (and through a transient "
                          f"scope: {e.message})", fix=fix) from None
    except OSError as e:
        raise CgroupError(f"exec: join the container's cgroup {leaf}: {e.strerror}", fix=fix) from None


def _enter(chan, parent, pidfd, flags, x, cfg, null):
    """Process X; never returns."""
    pid = None
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL, step="set the parent-death signal")
        if os.getppid() != parent:
            os._exit(125)
        libc.set_name("pirun-exec")
        for sig in (_signal.SIGINT, _signal.SIGQUIT, _signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU,
                    _signal.SIGTERM, _signal.SIGHUP, _signal.SIGUSR1, _signal.SIGUSR2, _signal.SIGWINCH):
            _signal.signal(sig, _signal.SIG_IGN)     # the host side forwards them to Y
        _preload(cfg.get("seccomp", True), x.tty)
        chan.expect(sync.GO, "exec: wait for the cgroup")
        libc.setns(pidfd, flags, step="exec: enter the container's")
        os.close(pidfd)
        # Y must not speak on the channel before X has announced it (CHILD before SETUP): it waits for one
        # byte on this pipe, which X writes after sending CHILD.
        hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
        life_r, life_w = os.pipe2(os.O_CLOEXEC)     # EOF for Y once X is gone (see init's parent_fd)
        pid = os.fork()
        if pid == 0:
            os.close(hold_w)
            os.close(life_w)
            if os.read(hold_r, 1) != b"G":
                os._exit(125)
            os.close(hold_r)
            _command(chan, x, cfg, null, life_r)
        os.close(hold_r)
        os.close(life_r)
        chan.send(sync.CHILD, pid)
        os.write(hold_w, b"G")
        os.close(hold_w)
    except BaseException as e:                       # noqa: BLE001 - reported to the host side
        code = chan.send_error(e)
        if pid is not None:
            # Y must not outlive X unreaped: an orphan's zombie in the container's PID namespace would keep
            # the container's PID 1 from finishing its exit until some subreaper collects it
            _kill(pid, _signal.SIGKILL)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        os._exit(code)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(125)
        except InterruptedError:
            continue
    chan.send_status(status)
    os._exit(0)


def _preload(seccomp, tty):
    import errno, fcntl, struct, termios  # noqa: F401,E401
    from runtime import caps, init, syscalls  # noqa: F401
    if seccomp:
        from runtime import seccomp  # noqa: F401,F811  (fails closed: no filter module, no exec)


def _command(chan, x, cfg, null, parent_fd):
    """Process Y, inside every namespace of the container; never returns."""
    import sys
    init = sys.modules["runtime.init"]
    sc = sys.modules["runtime.syscalls"].Syscalls()
    try:
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL, step="set the parent-death signal")
        sc.reset_signals()
        os.setsid()                                  # never the caller's session (TIOCSTI)
        slave = None
        if x.tty:
            master, slave = sc.open_pty()
            chan.send(sync.SETUP, fds=(master,))
            os.close(master)
        else:
            chan.send(sync.SETUP)
        chan.expect(sync.GO, "exec: wait for the host side")
        if slave is not None:
            sc.attach_terminal(slave)
        elif null is not None:
            os.dup2(null, 0)
        try:
            os.chdir(x.workdir)
        except OSError as e:
            raise SetupError(f"exec: workdir {x.workdir}: {e.strerror}", fix="choose another -w") from None
        ids = _user(x.user) if x.user else (tuple(cfg["user"]) if cfg.get("user") else None)
        sc.close_fds(chan.fileno(), parent_fd)
        init.drop_privileges(sc, cfg.get("caps", ()), ids, parent_fd)
        if cfg.get("seccomp", True):
            sc.install_seccomp()
        init.exec_command(sc, x.argv, x.env)
    except BaseException as e:                       # noqa: BLE001
        os._exit(chan.send_error(e))


def _user(text):
    """-u USER[:GROUP] -> (uid, gid) from the container's /etc/passwd and /etc/group (or numbers)."""
    from runtime.errors import SpecError
    name, _, group = text.partition(":")
    passwd = _table("/etc/passwd")
    uid = gid = None
    if name.isdigit():
        uid = int(name)
        for fields in passwd:
            if fields[2] == name:
                gid = int(fields[3])
    else:
        for fields in passwd:
            if fields[0] == name:
                uid, gid = int(fields[2]), int(fields[3])
        if uid is None:
            raise SpecError(f"exec -u {text}: no user {name!r} in the container's /etc/passwd")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            gid = next((int(f[2]) for f in _table("/etc/group") if f[0] == group), None)
            if gid is None:
                raise SpecError(f"exec -u {text}: no group {group!r} in the container's /etc/group")
    return uid, uid if gid is None else gid


def _table(path):
    try:
        with open(path) as f:
            return [ln.split(":") for ln in f.read().splitlines() if ln.count(":") >= 3 and not ln.startswith("#")]
    except OSError:
        return []


def run(c, argv, opts):
    """The host side of `pirun exec`, from the parsed options. Returns the exit code."""
    from runtime.errors import SpecError
    cfg = c.config
    tty = bool(opts.get("tty"))
    env = dict(cfg.get("env", ()))
    for text in opts.get("env", ()):
        key, eq, value = text.partition("=")
        if not key or "\0" in text:
            raise SpecError(f"exec -e {text!r}: expected NAME=VALUE or NAME")
        if eq:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    if tty:
        env["TERM"] = os.environ.get("TERM") or "xterm"
    workdir = (opts.get("workdir") or [cfg.get("workdir") or "/"])[-1]
    if not workdir.startswith("/"):
        raise SpecError(f"exec -w {workdir}: must be an absolute path")
    user = (opts.get("user") or [None])[-1]
    return Exec(c, argv, env, workdir, user, tty, bool(opts.get("interactive")), _warn).run()


def _warn(text, prefix="warning: "):
    os.write(2, f"pirun: {prefix}{text}\n".encode(errors="replace"))

