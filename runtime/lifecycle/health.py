"""Health checks of recorded containers, with podman's options and semantics.

    the check        podman's Test: ["CMD-SHELL", "STRING"] runs `/bin/sh -c STRING`, ["CMD", ARG...] runs ARGs
                     as they are; run inside the container as `pirun exec` runs a command (runtime.lifecycle.exec:
                     every namespace, the cgroup leaf, the capabilities, no_new_privs, the seccomp filter, the
                     container's environment and working directory), no terminal, stdin /dev/null, stdout and
                     stderr captured (the first 500 characters kept, as podman). After `timeout` the check's
                     process group gets SIGKILL and the check counts as failed (exit code -1).
    the schedule     the monitor (runtime.lifecycle.monitor) starts one check `interval` after the container
                     started and `interval` after each check ended, in a child process of its own ("pirun-health",
                     dies with the monitor), which sends the result back over a pipe; `pirun healthcheck run`
                     runs one now, in its own process.
    the record       State["health"] = {Status: starting|healthy|unhealthy, FailingStreak, Log: the last 5
                     results {Start, End, ExitCode, Output}}, read-modified-written under the container's lock
                     (state.Container.locked), replaced by rename. A success: healthy, streak 0. A failure: the
                     streak grows, unless it started within `start_period` of the container's start; at
                     `retries` the container is unhealthy and `on_failure` runs: none, kill (SIGKILL to PID 1:
                     the container ends with 137, and a systemd service with Restart= starts it again), stop
                     (the stop signal, SIGKILL 10 s later). podman's `restart` is refused: kill plus systemd's
                     Restart= is the way here.

The check's configuration (RunOptions over the image's Healthcheck, runtime.image.config.healthcheck) is kept
in the container's config record as {test, interval, timeout, retries, start_period, on_failure}, durations in
seconds (interval 0: no schedule, `pirun healthcheck run` only).
"""
import os
import time

from runtime.errors import PirunError, SpecError

DEFAULTS = {"interval": 30.0, "timeout": 30.0, "retries": 3, "start_period": 0.0, "on_failure": "none"}
ACTIONS = ("none", "kill", "stop")
LOG_ENTRIES = 5
OUTPUT_MAX = 500
MIN_DURATION = 0.01            # shorter intervals and timeouts would make the monitor spin
STOP_TIMEOUT = 10.0            # on-failure=stop: SIGKILL after this, as `pirun stop`'s default

_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# --- options ---------------------------------------------------------------------------------------------------
def parse_duration(name, text):
    """Go's time.ParseDuration ("30s", "1m30s", "0.2s", "500ms"; "0" alone) -> seconds."""
    fix = "give a duration such as 30s, 1m30s, 500ms"
    if text == "0":
        return 0.0
    total, i, n = 0.0, 0, len(text)
    if not text:
        raise SpecError(f"{name}: empty duration", fix=fix)
    while i < n:
        j = i
        while j < n and (text[j].isdigit() or text[j] == "."):
            j += 1
        number = text[i:j]
        k = j
        while k < n and not (text[k].isdigit() or text[k] == "."):
            k += 1
        unit = text[j:k]
        try:
            value = float(number)
        except ValueError:
            value = None
        if value is None or not number.replace(".", "", 1).isdigit() or unit not in _UNITS:
            raise SpecError(f"{name}: invalid duration {text!r}", fix=fix)
        total += value * _UNITS[unit]
        i = k
    return total


def format_duration(seconds):
    """Seconds as Go prints a duration (30s, 1m30s, 200ms)."""
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms"
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if h or m else "")
    return out + f"{s:g}s"


def parse_test(name, text):
    """--health-cmd: a shell string, podman's JSON array (["CMD", "arg"] / ["CMD-SHELL", "string"] / a bare
    array: run as given), or `none` -> the Test list. As podman, text that is not JSON is a shell string, even
    when it starts with "[" (`[ -e /ready ]`); a JSON value that is not an array of strings is refused."""
    if text.lower() == "none":
        return ("NONE",)
    value = None
    if text.startswith("["):
        import json
        try:
            value = json.loads(text)
        except ValueError:
            value = None                                 # `[ -e /ready ]`: the shell's test command
    if value is not None:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise SpecError(f"{name} {text!r}: expected a command or a JSON array of strings",
                            fix='e.g. --health-cmd \'["CMD", "test", "-e", "/ready"]\'')
        if value[0] in ("CMD", "CMD-SHELL", "NONE"):
            if value[0] != "NONE" and len(value) < 2:
                raise SpecError(f"{name} {text!r}: {value[0]} needs a command")
            return tuple(value)
        return ("CMD",) + tuple(value)
    if not text.strip():
        raise SpecError(f"{name}: empty command", fix="give a command, or --no-healthcheck")
    return ("CMD-SHELL", text)


def options(opts):
    """cli's {key: (option, value)} -> the RunOptions health fields and the explicit keys."""
    values, explicit = {}, set()
    given = [k for k in ("health_cmd", "health_interval", "health_retries", "health_start_period",
                         "health_timeout", "health_on_failure") if k in opts]
    if "no_healthcheck" in opts:
        if given:
            raise SpecError(f"--no-healthcheck and {opts[given[0]][0]} contradict each other",
                            fix="give one or the other")
        values["no_healthcheck"] = True
        return values, explicit
    for key in given:
        name, text = opts[key]
        if "\0" in text:
            raise SpecError(f"{name}: value contains a NUL byte")
        if key == "health_cmd":
            value = parse_test(name, text)
        elif key == "health_retries":
            if not (text.isascii() and text.isdigit() and 0 < int(text) <= 1 << 20):
                raise SpecError(f"{name} {text!r}: expected a whole number of 1 or more")
            value = int(text)
        elif key == "health_on_failure":
            if text == "restart":
                raise SpecError(f"{name} restart: not supported",
                                fix="use --health-on-failure kill and let systemd's Restart= start it again")
            if text not in ACTIONS:
                raise SpecError(f"{name} {text!r}: expected none, kill or stop")
            value = text
        elif key == "health_interval" and text == "disable":
            value = 0.0
        else:
            value = parse_duration(name, text)
            if key == "health_start_period":
                if value < 0:
                    raise SpecError(f"{name} {text}: must not be negative")
            elif value < MIN_DURATION:
                raise SpecError(f"{name} {text}: must be at least {format_duration(MIN_DURATION)}" +
                                (" (or disable)" if key == "health_interval" else ""))
        values[key] = value
        explicit.add(key)
    return values, explicit


def merge(opts, image):
    """The container's check: RunOptions over the image's Healthcheck (OCI/Docker config: Test, Interval,
    Timeout, Retries, StartPeriod; durations in nanoseconds, 0 = the default). None: no check."""
    explicit = opts.explicit
    if opts.no_healthcheck:
        return None
    image = image if isinstance(image, dict) else {}
    test = opts.health_cmd if "health_cmd" in explicit else image.get("Test")
    if test and test[0] == "NONE" or not test:
        others = sorted(k for k in explicit if k.startswith("health_") and k != "health_cmd")
        if others and "health_cmd" not in explicit:
            option = "--" + others[0].replace("_", "-")
            raise SpecError(f"{option}: the container has no health check",
                            fix="give --health-cmd CMD (or use an image with a Healthcheck)")
        return None
    test = list(test)
    if test[0] not in ("CMD", "CMD-SHELL"):
        test = ["CMD"] + test
    if len(test) < 2 or not all(isinstance(t, str) for t in test):
        raise SpecError(f"the image's Healthcheck Test {test!r} is not a command",
                        fix="give --health-cmd CMD, or --no-healthcheck")
    hc = {"test": test}
    for key, image_key in (("interval", "Interval"), ("timeout", "Timeout"), ("retries", "Retries"),
                           ("start_period", "StartPeriod"), ("on_failure", None)):
        if f"health_{key}" in explicit:
            hc[key] = getattr(opts, f"health_{key}")
            continue
        value = image.get(image_key) if image_key else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            hc[key] = value if key == "retries" else value / 1e9
        else:
            hc[key] = DEFAULTS[key]
    return hc


def argv(test):
    if test[0] == "CMD-SHELL":
        return ["/bin/sh", "-c", " ".join(test[1:])]
    return list(test[1:])


# --- one check ----------------------------------------------------------------------------------------------------
def run_check(c, hc):
    """Run the check once inside the running container `c`: {Start, End, ExitCode, Output}. A command that
    cannot run (127, 126) is a failed check; a container that is not running is state.Improper."""
    from runtime.lifecycle import state
    cfg = c.config
    start = time.time()
    check = _Check(c, argv(hc["test"]), dict(cfg.get("env", ())), cfg.get("workdir") or "/", hc["timeout"])
    message = ""
    try:
        code = check.run()
    except state.Improper:
        raise
    except PirunError as e:
        code, message = e.exit_code, f"pirun: {e.line()}"
    finally:
        check.close()
    output = check.output.decode(errors="replace")
    if check.timed_out:
        code = -1
        message = f"healthcheck command exceeded timeout of {format_duration(hc['timeout'])}"
    if message:
        output = (output + "\n" if output and not output.endswith("\n") else output) + message
    return {"Start": start, "End": time.time(), "ExitCode": code, "Output": output[:OUTPUT_MAX]}


def _quiet(text, prefix=""):
    pass


def _check_class():
    from runtime.lifecycle.exec import Exec

    class Check(Exec):
        """`pirun exec` with the output captured into a pipe and a deadline (the launcher's tick)."""

        def __init__(self, c, argv, env, workdir, timeout):
            super().__init__(c, argv, env, workdir, None, False, False, _quiet)
            self.out_r, out_w = os.pipe2(os.O_CLOEXEC)
            null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            self.stdio = (null, out_w, out_w)
            self.output = bytearray()
            self.timeout = timeout
            self.deadline = time.monotonic() + timeout
            self.timed_out = False

        def _after_fork(self):
            for fd in set(self.stdio):
                os.close(fd)
            self.stdio = None

        def _watched(self):
            watched = super()._watched()
            watched[self.out_r] = self._on_output
            self._arm()
            return watched

        def _on_output(self, fd):
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if not data:
                return False
            room = OUTPUT_MAX * 4 - len(self.output)       # UTF-8: up to 4 bytes a character
            if room > 0:
                self.output += data[:room]
            self._arm()
            return True

        def _tick(self):
            self._arm()

        def _arm(self):
            left = self.deadline - time.monotonic()
            if left > 0:
                self.tick = max(1, int(left * 1000) + 1)
                return
            self.tick = 100                                  # until X reports how the check ended
            if not self.timed_out:
                self.timed_out = True
                _kill_group(self.c_pid, self.i_pid)

        def close(self):
            if self.stdio is not None:
                for fd in set(self.stdio):
                    os.close(fd)
                self.stdio = None
            if self.out_r is not None:
                os.close(self.out_r)
                self.out_r = None

    return Check


def _kill_group(c_pid, i_pid):
    """The check's process (a session leader: its group is everything it started) or, before it exists, the
    exec's process X (the check dies with it)."""
    import _signal
    for pid, group in ((c_pid, True), (c_pid, False), (i_pid, False)):
        if pid is None:
            continue
        try:
            (os.killpg if group else os.kill)(pid, _signal.SIGKILL)
            return
        except OSError:
            continue


_CHECK = None


def _Check(*args):                                       # noqa: N802 - a class, made on first use
    global _CHECK
    if _CHECK is None:
        _CHECK = _check_class()
    return _CHECK(*args)


# --- the record --------------------------------------------------------------------------------------------------
def initial():
    return {"Status": "starting", "FailingStreak": 0, "Log": []}


def record(c, hc, result):
    """Add `result` to the container's health record; returns the new health, or None when the container is no
    longer running (nothing is recorded then)."""
    with c.locked():
        st = c.reload()
        if st.get("status") != "running":
            return None
        health = dict(st.get("health") or initial())
        in_start = result["Start"] < (st.get("started_at") or 0) + hc["start_period"]
        if result["ExitCode"] == 0:
            health["Status"] = "healthy"
            health["FailingStreak"] = 0
        elif not in_start:
            health["FailingStreak"] = health.get("FailingStreak", 0) + 1
            if health["FailingStreak"] >= hc["retries"]:
                health["Status"] = "unhealthy"
        health["Log"] = (list(health.get("Log") or ()) + [result])[-LOG_ENTRIES:]
        c.write_state(dict(st, health=health))
    return health


# --- the monitor's side ------------------------------------------------------------------------------------------
def spawn(ctx, cid, hc, result_w):
    """Fork the process that runs one check for the monitor and writes its result (one marshalled dict, less
    than PIPE_BUF: one atomic write) to `result_w`. Returns its PID. It dies with the monitor."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _child(ctx, cid, hc, result_w, parent)          # never returns
    return pid


def _child(ctx, cid, hc, result_w, parent):
    import marshal
    import _signal
    start = time.time()
    try:
        from runtime import libc
        from runtime.signals import FORWARDED
        for sig in FORWARDED:
            _signal.signal(sig, _signal.SIG_DFL)
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL, step="set the parent-death signal")
        if os.getppid() != parent:
            os._exit(0)
        os.setpgid(0, 0)                                 # keys typed at the monitor's terminal are not ours
        libc.set_name("pirun-health")
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, result_w)                       # the monitor's fds (locks, pipes, channel) stay its own
        os.closerange(result_w + 1, 0x7FFFFFFF)
        from runtime.lifecycle import state
        result = run_check(state.Container(ctx, cid), hc)
    except BaseException as e:                           # noqa: BLE001 - a result all the same
        text = e.line() if isinstance(e, PirunError) else f"{type(e).__name__}: {e}"
        result = {"Start": start, "End": time.time(), "ExitCode": 125, "Output": f"pirun: {text}"[:OUTPUT_MAX]}
    try:
        os.write(result_w, marshal.dumps(result))
    except BaseException:                                # noqa: BLE001
        pass
    os._exit(0)


def lost(start, why):
    return {"Start": start, "End": time.time(), "ExitCode": -1, "Output": why}
