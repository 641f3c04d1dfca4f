"""The launcher, process P: host-side work only.

Plans the setup steps, forks I (runtime.child), writes its ID maps, places it in the cgroup, starts the network
helper, hands the terminal over, forwards signals to the container's PID 1, waits (one poll loop over the
channel, the helper's pidfd, the terminal and what a subclass adds), and turns how the container ended (an
`Ended` record) into run.py's exit code. Cleans up on every path: network helper, cgroup, terminal, and I (whose death
takes the container with it).
"""
import os
import _signal

from runtime import steps, sync
from runtime.errors import EXIT_RUNTIME, PirunError, SetupError
from runtime.signals import FORWARDED
from runtime.spec import Record

# Signals whose default action ends a process (the ones we forward, but SIGWINCH).
_FATAL = frozenset(FORWARDED) - {_signal.SIGWINCH}


class Interrupted(PirunError):
    """run.py got a fatal signal before the container's PID 1 existed."""

    def __init__(self, sig):
        super().__init__(f"interrupted by signal {sig} during start-up")
        self.exit_code = 128 + sig


def _sig_mask(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


class Ended(Record):
    """How the container's PID 1 ended: it exited with `code`, it was killed by `signal`, or the container
    side was `lost` (process I vanished, or it reported an error instead)."""
    __slots__ = ("code", "signal", "lost")
    _defaults = {"code": None, "signal": None, "lost": False}

    def exit_code(self):
        """run.py's exit status: the command's own, or 128+N for signal N."""
        return 128 + self.signal if self.signal is not None else self.code


class Launcher:
    tick = None                      # ms: call _tick() when nothing happened for that long (None: never)
    stdio = None                     # (stdin, stdout, stderr) fds for the container, else the caller's
    go_fds = ()                      # fds sent to C with GO: C keeps them until its execve closes them

    def __init__(self, spec, hostcfg, warn):
        self.spec = spec
        self.hostcfg = hostcfg
        self.warn = warn
        self.i_pid = None
        self.c_pid = None
        self.pending = None          # fatal signal received before C existed
        self.emulated = None         # signal whose default action we carried out for PID 1
        self.terminal = None
        self.backend = None
        self.cgroup = None
        self.chan = None
        self.error = None            # an error reported by the container side
        self.ended = None            # Ended, once the container is over

    # --- signals -----------------------------------------------------------------------------------------
    def _on_signal(self, sig, _frame):
        if sig == _signal.SIGWINCH and self.terminal is not None:
            self.terminal.resize()
            return
        c = self.c_pid
        if c is None:
            if sig in _FATAL:
                self.pending = sig
                if self.i_pid is not None:
                    _kill(self.i_pid, _signal.SIGKILL)
            return
        _kill(c, sig)
        if sig in _FATAL:
            # PID 1 of a PID namespace does not get signals it has no handler for; a normal process would
            # have been ended by this one, so do what its default action would have done.
            bit = 1 << (sig - 1)
            if not (_sig_mask(c, "SigCgt:") & bit or _sig_mask(c, "SigIgn:") & bit):
                self.emulated = sig
                _kill(c, _signal.SIGKILL)

    def _install_signals(self):
        for sig in FORWARDED:
            _signal.signal(sig, self._on_signal)

    def _check_pending(self):
        if self.pending is not None:
            raise Interrupted(self.pending)

    # --- run ---------------------------------------------------------------------------------------------
    def run(self):
        spec = self.spec
        from runtime.net import backend_for
        self.backend = backend_for(spec.net)
        self.backend.prepare()
        from runtime.cgroup import manager_for
        self.cgroup = manager_for(spec.limits, self.hostcfg)
        plan = steps.plan(spec, self.backend)
        import pwd
        uid, gid = os.getuid(), os.getgid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)

        self._install_signals()
        try:
            if self.cgroup is not None:
                self.cgroup.create()
            return self._start_and_wait(spec, plan, uid, gid, user)
        except SetupError:
            if self.pending is not None:
                raise Interrupted(self.pending) from None
            raise
        finally:
            self._cleanup()

    def _start_and_wait(self, spec, plan, uid, gid, user):
        parent, child = sync.Channel.pair()
        self.chan = parent
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            parent.close()
            if self.stdio is not None:
                for target, fd in enumerate(self.stdio):
                    os.dup2(fd, target)
            from runtime.child import intermediate
            intermediate(spec, plan, child, me, self.backend.unshare_net)    # never returns
            os._exit(EXIT_RUNTIME)
        self.i_pid = pid
        child.close()
        self._after_fork()
        self._check_pending()

        parent.expect(sync.USERNS, "create the user namespace")
        from runtime import idmap
        mapping = idmap.write_maps(pid, uid, gid, user)
        if mapping.warning:
            self.warn(mapping.warning)
        if self.cgroup is not None:
            self.cgroup.add(pid)
        parent.send(sync.MAPPED)

        fields, _ = parent.expect(sync.CHILD, "create the namespaces")
        self.c_pid = int(fields[0])
        if self.cgroup is not None:
            self.cgroup.release(pid)
        self._check_pending()
        self.backend.start(pid)                     # concurrent with C's mounts
        _, fds = parent.expect(sync.SETUP, "set up the container")
        if spec.tty:
            if not fds:
                raise SetupError("set up the terminal: no pseudo-terminal received")
            self.terminal = self._make_terminal(fds[0])
            self.terminal.start()
        parent.send(sync.GO, fds=self.go_fds)
        return self._wait()

    # --- hooks for the monitor (runtime.lifecycle.monitor) ------------------------------------------------
    def _after_fork(self):
        """P, right after forking I."""

    def _make_terminal(self, master):
        from runtime.terminal import Terminal
        return Terminal(master)

    # --- wait: one loop over one set of fds ---------------------------------------------------------------
    def _watched(self):
        """fd -> handler(fd) for everything the launcher waits on while the container runs: the channel (how
        the container ended), the network helper's pidfd, the terminal's two ends, and what a subclass adds
        (the monitor's log pipes). A handler returns False to stop watching its fd."""
        watched = {self.chan.fileno(): self._on_channel}
        for fd in self.backend.watch_fds():
            watched[fd] = self._on_helper
        if self.terminal is not None:
            watched.update(self.terminal.handlers())
        return watched

    def _on_channel(self, _fd):
        kind, fields, fds = self.chan.recv()
        for fd in fds:
            os.close(fd)
        if kind == sync.ERROR:
            self.error = sync.error_from_fields(fields)     # I reports C's end next
        elif kind == sync.EXIT:
            self.ended = Ended(code=int(fields[0]))
        elif kind == sync.SIGNAL:
            self.ended = Ended(signal=int(fields[0]))
        elif kind is None:
            self.ended = Ended(lost=True)
            return False
        return True

    def _on_helper(self, _fd):
        notice = self.backend.poll()
        if notice:
            self.warn(notice)
        return False                                # a helper dies once

    def _tick(self):
        """Called when `tick` ms pass without an event (subclasses that set `tick`)."""

    def _wait(self):
        watched = self._watched()
        poller = None
        while self.ended is None:
            if len(watched) == 1 and self.tick is None:
                ready = tuple(watched)              # one fd: the blocking read is the wait (no import)
            else:
                if poller is None:
                    import select
                    poller = select.poll()
                    for fd in watched:
                        poller.register(fd, select.POLLIN)
                ready = [fd for fd, _ in poller.poll(self.tick)]
                if not ready:
                    self._tick()
            for fd in ready:
                if fd in watched and not watched[fd](fd):
                    del watched[fd]
                    if poller is not None:
                        poller.unregister(fd)
        if self.terminal is not None:
            self.terminal.drain()
        return self._finish(self.ended)

    def _finish(self, ended):
        """The exit code for how the container ended; raises what the container side reported."""
        if self.error is not None:
            raise self.error
        if ended.lost:
            _, status = os.waitpid(self.i_pid, 0)
            self.i_pid = None
            raise SetupError(f"the container's supervisor process ended unexpectedly (status {status})")
        if self.cgroup is not None:
            line = self.cgroup.result(ended)
            if line:
                self.warn(line, prefix="")
            if self.spec.limits.stats:
                self.warn(self.cgroup.stats(), prefix="")
        if ended.signal == _signal.SIGKILL and self.emulated is not None:
            return 128 + self.emulated
        return ended.exit_code()

    def _cleanup(self):
        if self.terminal is not None:
            self.terminal.restore()
        if self.i_pid is not None:
            _kill(self.i_pid, _signal.SIGKILL)
            try:
                os.waitpid(self.i_pid, 0)
            except ChildProcessError:
                pass
            self.i_pid = None
        if self.backend is not None:
            self.backend.stop()
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.chan is not None:
            self.chan.close()


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def launch(spec, hostcfg, warn):
    return Launcher(spec, hostcfg, warn).run()
