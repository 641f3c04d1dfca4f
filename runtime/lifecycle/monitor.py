"""The monitor of a named or detached container: the launcher, recording what happens (as podman's conmon).

    pirun run -d ...      the `pirun` process forks the monitor, which starts its own session (no terminal),
                          points its stdio at /dev/null and gives the container /dev/null as stdin and two pipes
                          as stdout and stderr, which it copies into the log (runtime.lifecycle.logs). `pirun
                          run -d` waits on a pipe until the monitor says "started" (the command was exec'd)
                          or sends the error, then prints the ID and exits.
    pirun run --name N    the same monitor in the foreground (a systemd service's ExecStart): the caller's
                          stdio and terminal, as run.py, recorded so that ps, exec, stop and inspect work.

The monitor owns the network helper, the cgroup, the log and the exit status; it holds the container's lock
(state.py) for its whole life. Its container dies with it (the launcher's parent-death chain), so `kill -9`
of the monitor leaves nothing running, and the free lock makes the record read as exited.

"Started" is when the container's PID 1 has exec'd the command: the monitor sends C the write end of a pipe
with GO (Launcher.go_fds); C keeps it, close-on-exec, until its execve (with --init: the command's), so the
read end's EOF in the monitor's loop is the exec, with no polling. An EOF with a message waiting on the channel
is a failed exec (the error is sent before the fd closes). A container that fails to start leaves no record.
"""
import os

from runtime.errors import PirunError
from runtime.launcher import Launcher
from runtime.lifecycle import logs, state


class Monitor(Launcher):
    def __init__(self, spec, hostcfg, warn, ctx, container, detached, notify=None, hold=()):
        super().__init__(spec, hostcfg, warn)
        self.hold = hold                     # fds kept open until the container is over (the image's lock)
        self.ctx = ctx
        self.container = container
        self.detached = detached
        self.notify = notify                 # fd: "started\n" or "error CODE LINE\n" for `pirun run -d`
        self.started = False
        self.log = None
        self.pipes = {}                      # read end -> (stream, Lines)
        self._child_ends = ()
        self.hc = container.config.get("healthcheck")   # the health check (runtime.lifecycle.health), or None
        self.hc_pid = None                   # the process running a check now
        self.hc_due = None                   # monotonic time of the next check
        self.hc_deadline = None              # ... and of giving up on the running one
        self.hc_start = None
        self.hc_pipe = None                  # (read, write): results of the checks, one marshalled dict each
        self.kill_at = None                  # on-failure=stop: SIGKILL at this monotonic time
        self.c_pidfd = None
        self.exec_r = None                   # EOF once C has exec'd the command (go_fds)
        if detached:
            self.log = logs.open_log(container.config)
            null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            self.stdio = (null, out_w, err_w)
            self._child_ends = self.stdio
            self.pipes = {out_r: ("stdout", logs.Lines()), err_r: ("stderr", logs.Lines())}
            self.warn = self._warn_to_log

    # --- the launcher's hooks ----------------------------------------------------------------------------------
    def _after_fork(self):
        for fd in self._child_ends:          # I has them as 0, 1, 2 now
            os.close(fd)
        self._child_ends = ()
        self.exec_r, w = os.pipe2(os.O_CLOEXEC)     # made after I's fork: only C will hold the write end
        self.go_fds = (w,)

    def _make_terminal(self, master):
        if self.detached:
            return _LogTerminal(master, self)
        return super()._make_terminal(master)

    def _watched(self):
        watched = super()._watched()
        for fd in self.go_fds:               # sent with GO: C holds it now
            os.close(fd)
        self.go_fds = ()
        watched[self.exec_r] = self._on_exec
        for fd in self.pipes:
            watched[fd] = self._on_pipe
        if self.hc is not None and self.hc["interval"] > 0:
            self.hc_pipe = os.pipe2(os.O_CLOEXEC)
            watched[self.hc_pipe[0]] = self._on_health
        if self.hc is not None:
            # the timers are looked at after every event too: a busy log must not starve them
            watched = {fd: self._then_timers(handler) for fd, handler in watched.items()}
        return watched

    def _then_timers(self, handler):
        def run(fd):
            keep = handler(fd)
            self._timers()
            return keep
        return run

    def _on_exec(self, fd):
        try:
            os.read(fd, 1)
        except OSError:
            pass
        import select
        if self.error is None and self.ended is None and not select.select([self.chan.fileno()], [], [], 0)[0]:
            self._mark_started()             # else: the exec failed, or the command is over (the channel says)
        return False

    def _tick(self):
        self._timers()

    # --- health checks (runtime.lifecycle.health) -------------------------------------------------------------
    def _timers(self):
        """Start a check that is due, give up on one that overran, carry out a pending SIGKILL; then set the
        loop's poll timeout to the next of them."""
        if self.hc is None:
            return
        import time
        now = time.monotonic()
        if self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self._signal_pid1(9)
        if self.hc_pid is None and self.hc_due is not None and now >= self.hc_due and self.ended is None:
            from runtime.lifecycle import health
            self.hc_start = time.time()
            self.hc_pid = health.spawn(self.ctx, self.container.id, self.hc, self.hc_pipe[1])
            self.hc_due = None
            self.hc_deadline = now + self.hc["timeout"] + 5.0     # the check keeps its own timeout
        if self.hc_pid is not None and now >= self.hc_deadline:
            from runtime.lifecycle import health
            self._end_check()
            self._health_result(health.lost(self.hc_start, "the health check's process did not report"))
        nexts = [t for t in (self.kill_at, self.hc_deadline if self.hc_pid else self.hc_due) if t is not None]
        self.tick = max(1, int((min(nexts) - now) * 1000) + 1) if nexts else None

    def _on_health(self, fd):
        import marshal
        try:
            data = os.read(fd, 65536)
            result = marshal.loads(data)
        except (OSError, EOFError, ValueError, TypeError):
            result = None
        if self.hc_pid is None:
            return True                      # a late result of a check given up on
        self._end_check()
        if not isinstance(result, dict):
            from runtime.lifecycle import health
            result = health.lost(self.hc_start, "the health check's process sent no result")
        self._health_result(result)
        return True

    def _end_check(self):
        """Reap the check's process (it exits right after its result; SIGKILL if it has not)."""
        import _signal
        pid, self.hc_pid, self.hc_deadline = self.hc_pid, None, None
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                os.kill(pid, _signal.SIGKILL)
                os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def _health_result(self, result):
        import time
        from runtime.lifecycle import health
        self.hc_due = time.monotonic() + self.hc["interval"]
        try:
            now = health.record(self.container, self.hc, result)
        except OSError:
            now = None                       # the record is gone (pirun rm -f on its way)
        if now is None or now["Status"] != "unhealthy":
            return
        action = self.hc["on_failure"]
        if action == "kill":
            self._signal_pid1(9)
        elif action == "stop" and self.kill_at is None:
            import _signal
            self._on_signal(self.container.config.get("stop_signal") or _signal.SIGTERM, None)
            self.kill_at = time.monotonic() + health.STOP_TIMEOUT

    def _signal_pid1(self, sig):
        """Through a pidfd taken when the command started: never a recycled PID."""
        if self.c_pidfd is None:
            return
        import _signal
        try:
            _signal.pidfd_send_signal(self.c_pidfd, sig)
        except OSError:
            pass

    def _finish(self, ended):
        self._drain_pipes()
        if self.error is None and not ended.lost:
            self._mark_started()             # it ran (perhaps too briefly to be seen running)
        return super()._finish(ended)

    def _cleanup(self):
        if self.hc_pid is not None:
            self._end_check()
        super()._cleanup()
        for fd in list(self.pipes):
            os.close(fd)
        self.pipes = {}
        for fd in self.go_fds:
            os.close(fd)
        self.go_fds = ()
        if self.exec_r is not None:
            os.close(self.exec_r)
            self.exec_r = None
        for fd in self.hc_pipe or ():
            os.close(fd)
        self.hc_pipe = None
        if self.c_pidfd is not None:
            os.close(self.c_pidfd)
            self.c_pidfd = None

    # --- log ---------------------------------------------------------------------------------------------------
    def _on_pipe(self, fd):
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        stream, lines = self.pipes[fd]
        if not data:
            self._emit(stream, lines.flush())
            return False
        self._emit(stream, lines.feed(data))
        return True

    def _emit(self, stream, lines):
        if self.log is not None:
            for line, full in lines:
                self.log.write(stream, line, full)

    def _drain_pipes(self):
        """What the container wrote just before it ended (its processes are gone: EOF comes at once)."""
        import select
        left = dict(self.pipes)
        while left:
            r, _, _ = select.select(list(left), [], [], 0.5)
            if not r:
                break
            for fd in r:
                if not self._on_pipe(fd):
                    del left[fd]
        for stream, lines in self.pipes.values():
            self._emit(stream, lines.flush())

    def _warn_to_log(self, text, prefix="warning: "):
        self._emit("stderr", [(f"pirun: {prefix}{text}".encode(errors="replace"), True)])

    # --- record ------------------------------------------------------------------------------------------------
    def _mark_started(self):
        if self.started:
            return
        self.started = True
        self.tick = None
        me = os.getpid()
        extra = {}
        if self.hc is not None and self.ended is None:
            from runtime.lifecycle import health
            import time
            extra["health"] = health.initial()
            try:
                self.c_pidfd = os.pidfd_open(self.c_pid)
            except OSError:
                pass
            if self.hc["interval"] > 0:
                self.hc_due = time.monotonic() + self.hc["interval"]
                self.tick = max(1, int(self.hc["interval"] * 1000))
        self.container.update(status="running", pid=self.c_pid, pid_start=state.start_time(self.c_pid),
                              monitor_pid=me, monitor_pid_start=state.start_time(me), started_at=state.now(),
                              cgroup=self.cgroup.leaf if self.cgroup is not None else None, **extra)
        self._tell("started")

    def _tell(self, message):
        if self.notify is not None:
            try:
                os.write(self.notify, message.encode(errors="replace") + b"\n")
            except OSError:
                pass
            os.close(self.notify)
            self.notify = None

    def run(self):
        try:
            code = super().run()
        except PirunError as e:
            self._over(e.exit_code, e.line())
            raise
        except BaseException as e:
            self._over(125, f"internal error: {type(e).__name__}: {e}")
            raise
        self._over(code, None)
        return code

    def _over(self, code, error):
        c = self.container
        if self.log is not None:
            self.log.close()
            self.log = None
        if not self.started:                 # never ran: leave nothing behind, say why
            self._tell(f"error {code} {error or 'the container did not start'}")
            state.remove(self.ctx, c)
            self._release()
            return
        c.update(status="exited", exit_code=code, finished_at=state.now(), error=error,
                 oom=bool(self.ended and self.cgroup is not None and self.cgroup.result(self.ended)))
        if c.config.get("remove"):
            state.remove(self.ctx, c)
        self._release()

    def _release(self):
        for fd in self.hold:
            os.close(fd)
        self.hold = ()


class _LogTerminal:
    """A detached container's pseudo-terminal: what the command writes goes to the log as stdout; no input."""

    def __init__(self, master, monitor):
        self.master = master
        self.monitor = monitor
        self.lines = logs.Lines()

    def start(self):
        pass

    def resize(self):
        pass

    def handlers(self):
        return {self.master: self._copy_out}

    def _copy_out(self, _fd):
        try:
            data = os.read(self.master, 65536)
        except OSError:                      # EIO: every slave fd is closed
            data = b""
        if not data:
            self.monitor._emit("stdout", self.lines.flush())
            return False
        self.monitor._emit("stdout", self.lines.feed(data.replace(b"\r\n", b"\n")))
        return True

    def drain(self):
        import select
        while self.master is not None:
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r or not self._copy_out(self.master):
                break
        self.monitor._emit("stdout", self.lines.flush())

    def restore(self):
        if self.master is not None:
            os.close(self.master)
            self.master = None


# --- starting a recorded container --------------------------------------------------------------------------------
def run_container(ctx, spec, hostcfg, opts, cid, hold=(), stop_signal=None, image_health=None):
    """`pirun run -d` / `pirun run --name`: record the container, then run its monitor (forked and detached
    with -d, in this process without). `hold`: fds that must stay open while the container lives (the image's
    writable-layer lock), run_container's to close from here on: the monitor has them (a fork inherits them) until it exits; the container's
    intermediate process too, so they are closed exactly when nothing of the container is left.
    `image_health`: the image's Healthcheck (runtime.image.config.healthcheck), under the --health-* options."""
    driver, max_size = logs.parse_options(opts.log_driver, opts.log_opts)
    if opts.detach and driver == "journald":
        logs.check_journal()
    name = state.valid_name(opts.name) if opts.name else state.generated_name(cid)
    log_dir = f"{ctx.root}/logs/{cid}" if opts.detach and driver == "k8s-file" else None
    log_path = f"{log_dir}/ctr.log" if log_dir else None
    config = _config(spec, opts, driver if opts.detach else "passthrough", max_size, log_path)
    if image_health is not None or any(k.startswith("health_") for k in opts.explicit) or opts.no_healthcheck:
        from runtime.lifecycle import health
        config["healthcheck"] = health.merge(opts, image_health)
    if stop_signal:
        from runtime.cmd.containers import parse_signal
        config["stop_signal"] = parse_signal(str(stop_signal))
    c, lock = state.create(ctx, cid, name, config)
    if log_dir:
        try:
            os.makedirs(log_dir, mode=0o700)
        except OSError as e:
            state.remove(ctx, c)
            os.close(lock)
            raise PirunError(f"create the log directory {log_dir}: {e.strerror}", fix="check --root") from None
    if not opts.detach:
        try:
            return Monitor(spec, hostcfg, ctx.warn, ctx, c, detached=False, hold=hold).run()
        finally:
            os.close(lock)
    return _detach(ctx, spec, hostcfg, c, lock, hold)


def _detach(ctx, spec, hostcfg, c, lock, hold):
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            os.close(r)
            code = _monitor_main(ctx, spec, hostcfg, c, w, hold)
        except BaseException:            # noqa: BLE001 - already recorded and told by the monitor
            pass
        os._exit(code)
    os.close(w)
    os.close(lock)                       # the monitor holds it now, and `hold`
    for fd in hold:
        os.close(fd)                     # `hold` is the monitor's (run_container's contract)
    message = b""
    while not message.endswith(b"\n"):
        try:
            chunk = os.read(r, 4096)
        except InterruptedError:
            continue
        if not chunk:
            break
        message += chunk
    os.close(r)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    text = message.decode(errors="replace").rstrip("\n")
    if text == "started":
        sys.stdout.write(c.id + "\n")
        return 0
    if text.startswith("error "):
        _, code, line = (text.split(" ", 2) + [""])[:3]
        err = PirunError(line)
        err.exit_code = int(code) if code.isdigit() else 125
        raise err
    # The monitor died before it said anything (kill -9): its container died with it. Remove the record
    # once the lock is free (process I may take a moment to follow its parent).
    import fcntl
    try:
        fd = os.open(f"{c.dir}/lock", os.O_RDONLY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.close(fd)
        state.remove(ctx, c)
    except OSError:
        pass
    raise PirunError("the container's monitor ended before the container started",
                     fix="see pirun ps -a; try again")


def _monitor_main(ctx, spec, hostcfg, c, notify, hold):
    os.setsid()                          # no controlling terminal, not in the caller's process group
    os.chdir("/")
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    from runtime import libc
    libc.set_name("pirun-monitor")
    try:
        mon = Monitor(spec, hostcfg, lambda *a, **k: None, ctx, c, detached=True, notify=notify, hold=hold)
    except OSError as e:                 # the log cannot be opened: say so, leave nothing
        os.write(notify, f"error 125 open the log {c.config.get('log_path')}: {e.strerror}\n".encode())
        state.remove(ctx, c)
        return 125
    return mon.run()


def _config(spec, opts, driver, max_size, log_path):
    import sys
    net = spec.net
    return {
        "image": opts.image or "",
        "rootfs": spec.rootfs,
        "command": list(spec.argv),
        "created": state.now(),
        "hostname": spec.hostname,
        "env": [list(kv) for kv in spec.env],
        "workdir": spec.workdir,
        "tty": spec.tty,
        "caps": list(spec.caps),
        "seccomp": spec.seccomp,
        "init": spec.init,
        "read_only": spec.read_only,
        "mounts": [{"source": v.host, "destination": v.target, "rw": not v.read_only} for v in spec.volumes],
        "net": net.mode,
        "ports": [{"host_ip": p.host_ip, "host_port": p.host_port, "container_port": p.container_port,
                   "protocol": p.proto} for p in net.publish],
        "limits": {k: getattr(spec.limits, k) for k in ("memory", "memory_swap", "pids", "cpus", "cpu_weight")},
        "log_driver": driver,
        "log_path": log_path,
        "log_max_size": max_size,
        "log_tag": logs.log_tag(opts.log_opts),
        "remove": opts.remove,
        "detached": opts.detach,
        "stop_signal": None,                 # an image's StopSignal (run_container)
        "healthcheck": None,                 # runtime.lifecycle.health's {test, interval, ...} (run_container)
        "user": list(spec.user) if spec.user else None,     # uid, gid: what exec runs as without -u
        "argv0": sys.argv[0] if sys.argv else "pirun",
    }
