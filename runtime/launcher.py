"""The launcher, process P: host-side work only.

Plans the setup steps, forks I (runtime.child), writes its ID maps, places it in the cgroup, starts the network
helper, hands the terminal over, forwards signals to the container's PID 1, waits, and turns how the container
ended into run.py's exit code. Cleans up on every path: network helper, cgroup, terminal, and I (whose death
takes the container with it).
"""
import os
import _signal

from runtime import steps, sync
from runtime.errors import EXIT_RUNTIME, PirunError, SetupError
from runtime.signals import FORWARDED

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


class Launcher:
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
            from runtime.child import intermediate
            intermediate(spec, plan, child, me, self.backend.unshare_net)    # never returns
            os._exit(EXIT_RUNTIME)
        self.i_pid = pid
        child.close()
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
            from runtime.terminal import Terminal
            self.terminal = Terminal(fds[0])
            self.terminal.start()
        parent.send(sync.GO)
        return self._wait()

    def _wait(self):
        result = []

        def on_message():
            kind, fields, fds = self.chan.recv()
            for fd in fds:
                os.close(fd)
            if kind == sync.ERROR:
                self.error = sync.error_from_fields(fields)
                return False
            if kind == sync.EXIT:
                result.append(("exit", int(fields[0])))
            elif kind == sync.SIGNAL:
                result.append(("signal", int(fields[0])))
            elif kind is None:
                result.append(("lost", 0))
            return bool(result)

        if self.terminal is not None:
            self.terminal.pump(self.chan, on_message)
        else:
            watch = self.backend.watch_fds() if hasattr(self.backend, "watch_fds") else ()
            if watch:
                import select
                watch = list(watch)
                while not result:
                    r, _, _ = select.select([self.chan.fileno()] + watch, [], [])
                    for fd in r:
                        if fd in watch:
                            notice = self.backend.poll()
                            if notice:
                                self.warn(notice)
                            watch.remove(fd)
                    if self.chan.fileno() in r:
                        on_message()
            else:
                while not on_message():
                    pass
        if self.error is not None:
            raise self.error
        how, value = result[0]
        status = None
        if how == "lost":
            _, status = os.waitpid(self.i_pid, 0)
            self.i_pid = None
            raise SetupError(f"the container's supervisor process ended unexpectedly (status {status})")
        if self.cgroup is not None:
            line = self.cgroup.result((how, value))
            if line:
                self.warn(line, prefix="")
            if self.spec.limits.stats:
                self.warn(self.cgroup.stats(), prefix="")
        if how == "signal":
            if value == _signal.SIGKILL and self.emulated is not None:
                return 128 + self.emulated
            return 128 + value
        return value

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
