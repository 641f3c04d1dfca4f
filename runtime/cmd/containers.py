"""Container commands with podman's names, options and exit codes: ps, logs, exec, stop, kill, rm, wait,
inspect, stats. Records come from runtime.lifecycle.state; whether a container runs, from the kernel.

Exit codes: 0; 125 for pirun's errors (no such container, a running container removed without -f, ...);
exec: the command's own, 126, 127, 128+N.
"""
import os
import sys
import time
import _signal

from runtime.errors import PirunError, SpecError
from runtime.lifecycle import state
from runtime.lifecycle.state import Improper

# Signals the monitor relays to the container's PID 1 (carrying out the default action PID 1 would not):
# sent to the monitor. Others go to PID 1 directly.
_RELAYED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2,
            _signal.SIGWINCH)


def _parse(argv, table, usage, rest_after_first=False):
    """Hand parser: table maps option -> (key, takes_value). Returns (opts, args). With rest_after_first,
    everything after the first argument belongs to it (exec NAME CMD...)."""
    opts, args = {}, []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            args += argv[i:]
            break
        if a in ("-h", "--help"):
            raise _Help(usage)
        if a.startswith("-") and a != "-":
            if a.startswith("--"):
                name, eq, value = a.partition("=")
                items = [(name, value if eq else None)]
            elif len(a) > 2 and all(f"-{c}" in table and not table[f"-{c}"][1] for c in a[1:]):
                items = [(f"-{c}", None) for c in a[1:]]
            elif len(a) > 2 and a[:2] in table and table[a[:2]][1]:
                items = [(a[:2], a[2:])]
            else:
                items = [(a, None)]
            for name, value in items:
                if name not in table:
                    raise SpecError(f"unknown option {name}", fix=usage)
                key, takes = table[name]
                if takes:
                    if value is None:
                        if i >= len(argv):
                            raise SpecError(f"option {name} needs a value", fix=usage)
                        value = argv[i]
                        i += 1
                    opts.setdefault(key, []).append(value)
                else:
                    opts[key] = True
            continue
        args.append(a)
        if rest_after_first:
            args += argv[i:]
            break
    return opts, args


class _Help(Exception):
    pass


def _command(fn):
    def wrapper(argv, ctx):
        try:
            return fn(list(argv), ctx)
        except _Help as h:
            sys.stdout.write(f"usage: {h.args[0]}\n")
            return 0
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _need(args, usage, n=1):
    if len(args) < n:
        raise SpecError("requires at least 1 container name or ID" if n == 1 else "missing arguments", fix=usage)


# --- time and status as podman prints them ----------------------------------------------------------------------
def human_duration(seconds):
    """go-units HumanDuration, as podman's ps."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = int(seconds / 3600 + 0.5)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def health_status(c):
    """starting | healthy | unhealthy for a running container with a health check, else ""."""
    if c.status != "running" or not c.config.get("healthcheck"):
        return ""
    return (c.state.get("health") or {}).get("Status") or "starting"


def status_text(c, now):
    st = c.status
    if st == "running":
        health = health_status(c)
        return f"Up {human_duration(now - (c.state.get('started_at') or now))}" + (f" ({health})" if health else "")
    if st == "exited":
        finished = c.state.get("finished_at")
        when = f" {human_duration(now - finished)} ago" if finished else ""
        return f"Exited ({c.exit_code}){when}"
    return "Created"


def ports_text(config):
    return ", ".join(f"{p['host_ip'] or '0.0.0.0'}:{p['host_port']}->{p['container_port']}/{p['protocol']}"
                     for p in config.get("ports", ()))


def _image(config):
    return config.get("image") or config.get("rootfs", "")


def _iso(t):
    if not t:
        return "0001-01-01T00:00:00Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e9):09d}Z"


# --- ps -----------------------------------------------------------------------------------------------------------
PS_USAGE = "pirun ps [-a] [-q] [--no-trunc] [--format json]"


@_command
def ps(argv, ctx):
    """List containers: running ones, or all with -a."""
    opts, args = _parse(argv, {"-a": ("all", False), "--all": ("all", False), "-q": ("quiet", False),
                               "--quiet": ("quiet", False), "--no-trunc": ("no_trunc", False),
                               "--format": ("format", True)}, PS_USAGE)
    if args:
        raise SpecError(f"ps takes no arguments (got {args[0]!r})", fix=PS_USAGE)
    fmt = (opts.get("format") or [None])[-1]
    if fmt not in (None, "json", "table"):
        raise SpecError(f"--format {fmt}: unsupported", fix="use --format json")
    now = time.time()
    containers = [c for c in state.load_all(ctx) if c.config and (opts.get("all") or c.status == "running")]
    containers.sort(key=lambda c: c.config.get("created", 0), reverse=True)
    if fmt == "json":
        import json
        sys.stdout.write(json.dumps([_ps_json(c, now) for c in containers], indent=4) + "\n")
        return 0
    if opts.get("quiet"):
        sys.stdout.write("".join((c.id if opts.get("no_trunc") else c.id[:12]) + "\n" for c in containers))
        return 0
    rows = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES")]
    for c in containers:
        cmd = " ".join(c.config.get("command", ()))
        if not opts.get("no_trunc") and len(cmd) > 20:
            cmd = cmd[:17] + "..."
        rows.append((c.id if opts.get("no_trunc") else c.id[:12], _image(c.config), cmd,
                     f"{human_duration(now - c.config.get('created', now))} ago", status_text(c, now),
                     ports_text(c.config), c.name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        out.append("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n")
    sys.stdout.write("".join(out))
    return 0


def _ps_json(c, now):
    cfg, st = c.config, c.state
    return {"Id": c.id, "Names": [c.name], "Image": _image(cfg), "Command": cfg.get("command", []),
            "Created": int(cfg.get("created", 0)), "CreatedAt": _iso(cfg.get("created")),
            "State": c.status, "Status": status_text(c, now), "ExitCode": c.exit_code or 0,
            "Exited": c.status == "exited", "Pid": c.pid() or 0,
            "StartedAt": int(st.get("started_at") or 0), "ExitedAt": int(st.get("finished_at") or 0),
            "Ports": cfg.get("ports", []), "AutoRemove": bool(cfg.get("remove")), "Health": health_status(c)}


# --- signals, stop, kill, wait ------------------------------------------------------------------------------------
def parse_signal(text):
    t = text.upper()
    if t.isdigit():
        n = int(t)
        if 1 <= n < _signal.NSIG:
            return n
    else:
        name = t if t.startswith("SIG") else "SIG" + t
        n = getattr(_signal, name, None)
        if isinstance(n, int) and name.isalnum() and not name.startswith(("SIG_", "SIGRT")):
            return n
    raise SpecError(f"invalid signal {text!r}", fix="use a name (TERM, KILL, HUP) or a number")


def _send(c, sig):
    """Deliver `sig` to the running container: relayed by its monitor (which stands in for PID 1's default
    action) for the signals it relays, else straight to PID 1. pidfds, checked against start times."""
    key = "monitor_pid" if sig in _RELAYED else "pid"
    fd = c.pidfd(key)
    if fd is None and key == "monitor_pid":
        fd = c.pidfd("pid")
    if fd is None:
        return False
    try:
        _signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(fd)
    return True


def _wait_stopped(c, timeout=None):
    """Block until nothing of the container runs (its lock is free): poll(2) on the monitor's pidfd, then a
    blocking flock for process I's last moments. Returns False on timeout."""
    import select
    fd = c.pidfd("monitor_pid")
    if fd is not None:
        try:
            p = select.poll()
            p.register(fd, select.POLLIN)
            if not p.poll(None if timeout is None else int(timeout * 1000)):
                return False
        finally:
            os.close(fd)
    elif timeout is not None and state.lock_held(f"{c.dir}/lock"):
        fd = c.pidfd("pid")                         # no monitor to watch: watch PID 1
        if fd is not None:
            try:
                p = select.poll()
                p.register(fd, select.POLLIN)
                if not p.poll(int(timeout * 1000)):
                    return False
            finally:
                os.close(fd)
    import fcntl
    try:
        lfd = os.open(f"{c.dir}/lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(lfd, fcntl.LOCK_SH)
    finally:
        os.close(lfd)
    return True


def _kill_now(c):
    """SIGKILL PID 1 (its monitor records 137); if there is no verifiable PID 1, the monitor itself."""
    if not _send(c, _signal.SIGKILL):
        fd = c.pidfd("monitor_pid")
        if fd is not None:
            try:
                _signal.pidfd_send_signal(fd, _signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.close(fd)


def stop_container(c, timeout):
    if c.status != "running":
        return
    sig = c.config.get("stop_signal") or _signal.SIGTERM
    if timeout > 0 and _send(c, sig) and _wait_stopped(c, timeout):
        return
    _kill_now(c)
    _wait_stopped(c)


STOP_USAGE = "pirun stop [-t SECONDS] NAME|ID..."


@_command
def stop(argv, ctx):
    opts, args = _parse(argv, {"-t": ("time", True), "--time": ("time", True), "-a": ("all", False),
                               "--all": ("all", False), "-i": ("ignore", False), "--ignore": ("ignore", False)},
                        STOP_USAGE)
    timeout = 10
    if "time" in opts:
        t = opts["time"][-1]
        if not t.isdigit():
            raise SpecError(f"-t {t}: not a number of seconds", fix=STOP_USAGE)
        timeout = int(t)
    return _each(ctx, args, opts, STOP_USAGE, lambda c, ref: stop_container(c, timeout))


def _each(ctx, args, opts, usage, action):
    """Run action on each named container (all with -a); print what was given on success, as podman does.
    A missing container is an error line (exit 125) after the others were done."""
    if opts.get("all"):
        targets = [(c, c.id) for c in state.load_all(ctx) if c.config]
    else:
        _need(args, usage)
        targets = []
        for ref in args:
            try:
                targets.append((state.lookup(ctx, ref), ref))
            except state.NoSuchContainer as e:
                if not opts.get("ignore"):
                    targets.append((e, ref))
    failure = None
    for c, ref in targets:
        try:
            if isinstance(c, PirunError):
                raise c
            action(c, ref)
            sys.stdout.write(ref + "\n")
            sys.stdout.flush()
        except PirunError as e:
            if failure is not None:
                os.write(2, f"pirun: error: {failure.line()}\n".encode())
            failure = e
    if failure is not None:
        raise failure
    return 0


KILL_USAGE = "pirun kill [-s SIGNAL] NAME|ID..."


@_command
def kill(argv, ctx):
    opts, args = _parse(argv, {"-s": ("signal", True), "--signal": ("signal", True), "-a": ("all", False),
                               "--all": ("all", False)}, KILL_USAGE)
    sig = parse_signal(opts["signal"][-1]) if "signal" in opts else _signal.SIGKILL

    def one(c, ref):
        if c.status != "running" or not _send(c, sig):
            raise Improper(f"can only kill running containers. {c.id[:12]} is in state {c.status}: "
                           "container state improper", fix=f"see pirun ps -a; pirun start is not needed: "
                           "pirun run starts containers")
    if opts.get("all"):
        return _each(ctx, [c.id for c in state.load_all(ctx) if c.status == "running"], {}, KILL_USAGE, one)
    return _each(ctx, args, opts, KILL_USAGE, one)


WAIT_USAGE = "pirun wait NAME|ID..."


@_command
def wait(argv, ctx):
    """Block until each container has ended; print its exit code."""
    opts, args = _parse(argv, {"--condition": ("condition", True)}, WAIT_USAGE)
    _need(args, WAIT_USAGE)
    for cond in opts.get("condition", []):
        if cond not in ("stopped", "exited"):
            raise SpecError(f"--condition {cond}: unsupported", fix="use --condition exited")
    for ref in args:
        c = state.lookup(ctx, ref)
        _wait_stopped(c)
        c = state.Container(ctx, c.id)
        code = c.exit_code
        sys.stdout.write(f"{-1 if code is None else code}\n")
        sys.stdout.flush()
    return 0


RM_USAGE = "pirun rm [-f] [-a] [-i] NAME|ID..."


@_command
def rm(argv, ctx):
    opts, args = _parse(argv, {"-f": ("force", False), "--force": ("force", False), "-a": ("all", False),
                               "--all": ("all", False), "-i": ("ignore", False), "--ignore": ("ignore", False),
                               "-t": ("time", True), "--time": ("time", True)}, RM_USAGE)

    def one(c, ref):
        remove_container(ctx, c, ref, bool(opts.get("force")))
    state.sweep(ctx)
    return _each(ctx, args, opts, RM_USAGE, one)


def remove_container(ctx, c, ref, force):
    """`pirun rm [-f]` of one container: its record, its name and its writable layer."""
    if c.status == "running" or state.lock_held(f"{c.dir}/lock"):
        if not force:
            raise Improper(f"cannot remove container {c.id} as it is running - running or paused "
                           "containers cannot be removed without force: container state improper",
                           fix=f"pirun stop {ref} first, or pirun rm -f {ref}")
        _kill_now(c)
        _wait_stopped(c)
    state.remove(ctx, c)
    from runtime.image.container import remove_layer
    remove_layer(ctx, c.id, wait=2.0)


def replace(ctx, name):
    """`pirun run --replace --name NAME`: a container of that name, running or not, is removed first."""
    try:
        c = state.lookup(ctx, name)
    except state.NoSuchContainer:
        return
    if c.name == name:                 # a name, never an ID prefix that happens to match
        remove_container(ctx, c, name, force=True)


# --- inspect -----------------------------------------------------------------------------------------------------
INSPECT_USAGE = "pirun inspect [--format TEMPLATE] NAME|ID..."


def inspect_data(c):
    cfg, st = c.config, c.state
    cmd = cfg.get("command", [])
    limits = cfg.get("limits", {})
    ports = {}
    for p in cfg.get("ports", ()):
        ports.setdefault(f"{p['container_port']}/{p['protocol']}", []).append(
            {"HostIp": p["host_ip"] or "0.0.0.0", "HostPort": str(p["host_port"])})
    status = c.status
    return {
        "Id": c.id,
        "Created": _iso(cfg.get("created")),
        "Path": cmd[0] if cmd else "",
        "Args": cmd[1:],
        "State": {"Status": status, "Running": status == "running", "Pid": c.pid() or 0,
                  "ConmonPid": c.monitor_pid() or 0, "ExitCode": c.exit_code or 0,
                  "Error": st.get("error") or ("" if status != "exited" or st.get("status") == "exited"
                                                else "the container's monitor was killed (SIGKILL)"),
                  "OOMKilled": bool(st.get("oom")), "StartedAt": _iso(st.get("started_at")),
                  "FinishedAt": _iso(st.get("finished_at")) if status == "exited" else _iso(None),
                  **_health_inspect(c)},
        "Image": cfg.get("image", ""),
        "ImageName": cfg.get("image", ""),
        "Rootfs": cfg.get("rootfs", ""),
        "Name": c.name,
        "LogPath": cfg.get("log_path") or "",
        "Mounts": [{"Type": "bind", "Source": m["source"], "Destination": m["destination"], "RW": m["rw"],
                    "Options": ["rbind"], "Propagation": "rslave"} for m in cfg.get("mounts", ())],
        "NetworkSettings": {"Mode": cfg.get("net"), "Ports": ports},
        "HostConfig": {"NetworkMode": cfg.get("net"), "Memory": limits.get("memory") or 0,
                       "MemorySwap": limits.get("memory_swap") or 0, "PidsLimit": limits.get("pids") or 0,
                       "NanoCpus": int((limits.get("cpus") or 0) * 1e9), "CpuWeight": limits.get("cpu_weight") or 0,
                       "AutoRemove": bool(cfg.get("remove")), "ReadonlyRootfs": bool(cfg.get("read_only")),
                       "LogConfig": {"Type": cfg.get("log_driver"), "Path": cfg.get("log_path") or "",
                                     "Size": str(cfg.get("log_max_size") or "")},
                       "Init": bool(cfg.get("init")), "CgroupPath": st.get("cgroup") or ""},
        "Config": {"Hostname": cfg.get("hostname"), "Env": [f"{k}={v}" for k, v in cfg.get("env", ())],
                   "Cmd": cmd, "WorkingDir": cfg.get("workdir"), "Tty": bool(cfg.get("tty")),
                   "StopSignal": cfg.get("stop_signal") or 15, **_healthcheck_config(cfg)},
    }


def _health_inspect(c):
    """State.Health as podman shows it: {Status, FailingStreak, Log: [{Start, End, ExitCode, Output}]}."""
    if not c.config.get("healthcheck"):
        return {}
    h = c.state.get("health") or {}
    status = health_status(c) or h.get("Status") or ""
    return {"Health": {"Status": status, "FailingStreak": h.get("FailingStreak", 0),
                       "Log": [{"Start": _iso(e.get("Start")), "End": _iso(e.get("End")),
                                "ExitCode": e.get("ExitCode"), "Output": e.get("Output", "")}
                               for e in h.get("Log") or ()]}}


def _healthcheck_config(cfg):
    hc = cfg.get("healthcheck")
    if not hc:
        return {}
    return {"Healthcheck": {"Test": hc["test"], "Interval": int(hc["interval"] * 1e9),
                            "Timeout": int(hc["timeout"] * 1e9), "Retries": hc["retries"],
                            "StartPeriod": int(hc["start_period"] * 1e9)},
            "HealthcheckOnFailureAction": hc["on_failure"]}


def _template(fmt, data):
    """The `{{.A.B}}` subset of Go templates that scripts use with podman inspect --format."""
    import json
    out, i = [], 0
    while True:
        j = fmt.find("{{", i)
        if j < 0:
            out.append(fmt[i:])
            break
        k = fmt.find("}}", j)
        if k < 0:
            raise SpecError(f"--format {fmt!r}: unclosed {{{{", fix="use {{.State.Status}} and the like")
        out.append(fmt[i:j])
        expr = fmt[j + 2:k].strip()
        if expr in ("json .", "."):
            value = data
        else:
            if not expr.startswith("."):
                raise SpecError(f"--format {fmt!r}: only {{{{.Field.Field}}}} is supported")
            value = data
            for part in expr[1:].split("."):
                if not isinstance(value, dict) or part not in value:
                    raise SpecError(f"--format {fmt!r}: no field {part!r}", fix="see pirun inspect NAME")
                value = value[part]
        if isinstance(value, bool):
            out.append("true" if value else "false")
        elif isinstance(value, (dict, list)):
            out.append(json.dumps(value))
        else:
            out.append(str(value))
        i = k + 2
    return "".join(out)


@_command
def inspect(argv, ctx):
    import json
    opts, args = _parse(argv, {"-f": ("format", True), "--format": ("format", True),
                               "--type": ("type", True)}, INSPECT_USAGE)
    _need(args, INSPECT_USAGE)
    data = [inspect_data(state.lookup(ctx, ref)) for ref in args]
    if "format" in opts:
        fmt = opts["format"][-1]
        sys.stdout.write("".join(_template(fmt, d) + "\n" for d in data))
    else:
        sys.stdout.write(json.dumps(data, indent=4) + "\n")
    return 0


# --- logs --------------------------------------------------------------------------------------------------------
LOGS_USAGE = "pirun logs [-f] [--tail N] [-t|--timestamps] NAME|ID"


@_command
def logs(argv, ctx):
    from runtime.lifecycle import logs as L
    opts, args = _parse(argv, {"-f": ("follow", False), "--follow": ("follow", False), "--tail": ("tail", True),
                               "-n": ("tail", True), "-t": ("timestamps", False),
                               "--timestamps": ("timestamps", False)}, LOGS_USAGE)
    _need(args, LOGS_USAGE)
    if len(args) > 1:
        raise SpecError("logs takes one container", fix=LOGS_USAGE)
    tail = None
    if "tail" in opts:
        t = opts["tail"][-1]
        if not (t.isdigit() or t == "-1"):
            raise SpecError(f"--tail {t}: not a number of lines", fix=LOGS_USAGE)
        tail = None if t == "-1" else int(t)
    c = state.lookup(ctx, args[0])
    driver = c.config.get("log_driver")
    if driver == "journald":
        raise SpecError(f"{c.name} logs to the journal", fix=f"journalctl CONTAINER_NAME={c.name}")
    if driver == "passthrough":
        raise SpecError(f"{c.name} runs in the foreground: its output goes where its caller's goes",
                        fix="see the terminal or service that started it (journalctl --user -u UNIT)")
    path = c.config.get("log_path")
    if not path:
        raise SpecError(f"{c.name} keeps no log (--log-driver none)")
    records = L.read_records(path)
    if tail is not None:
        # --tail counts lines, not parts of lines
        full_seen, start = 0, len(records)
        while start > 0 and full_seen <= tail:
            if records[start - 1][2]:
                full_seen += 1
                if full_seen > tail:
                    break
            start -= 1
        records = records[start:]
    ts = bool(opts.get("timestamps"))
    _write(L.render(records, ts))
    if opts.get("follow"):
        _follow(c, path, ts)
    return 0


def _write(chunks):
    for stream, data in chunks:
        fd = 2 if stream == b"stderr" else 1
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]


def _follow(c, path, ts):
    """Print records as the monitor appends them, across rotations (up to two between two looks), until the
    container has ended. Waits on the monitor's pidfd with a 100 ms timeout between reads of the file."""
    from runtime.lifecycle import logs as L
    import select
    try:
        f = open(path, "rb")
    except OSError:
        return
    f.seek(0, 2)
    mon = c.pidfd("monitor_pid")
    p = select.poll()
    if mon is not None:
        p.register(mon, select.POLLIN)
    pending = b""
    try:
        while True:
            ended = bool(p.poll(100)) if mon is not None else not state.lock_held(f"{c.dir}/lock")
            while True:
                data = f.read()
                if data:
                    pending = _emit_lines(pending + data, ts)
                try:
                    rotated = os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
                except OSError:
                    rotated = False
                if not rotated:
                    break
                # the rest of the old file was read above; if it is not ctr.log.1 any more, a second
                # rotation came before we looked: ctr.log.1 holds what followed it
                try:
                    again = os.stat(path + ".1").st_ino != os.fstat(f.fileno()).st_ino
                except OSError:
                    again = False
                f.close()
                if again:
                    try:
                        with open(path + ".1", "rb") as g:
                            pending = _emit_lines(pending + g.read(), ts)
                    except OSError:
                        pass
                f = open(path, "rb")
            if ended:
                return
    finally:
        f.close()
        if mon is not None:
            os.close(mon)


def _emit_lines(data, ts):
    """Print the complete records in `data`; return the incomplete rest."""
    from runtime.lifecycle import logs as L
    lines = data.split(b"\n")
    rest = lines.pop()
    _write(L.render([r for r in map(L.parse_record, lines) if r], ts))
    return rest


# --- exec --------------------------------------------------------------------------------------------------------
EXEC_USAGE = "pirun exec [-i] [-t] [-e NAME=VALUE] [-w DIR] [-u USER[:GROUP]] NAME|ID COMMAND [ARG...]"


@_command
def exec_(argv, ctx):
    opts, args = _parse(argv, {"-i": ("interactive", False), "--interactive": ("interactive", False),
                               "-t": ("tty", False), "--tty": ("tty", False), "-e": ("env", True),
                               "--env": ("env", True), "-w": ("workdir", True), "--workdir": ("workdir", True),
                               "-u": ("user", True), "--user": ("user", True)}, EXEC_USAGE,
                        rest_after_first=True)
    if len(args) < 2:
        raise SpecError("exec needs a container and a command", fix=EXEC_USAGE)
    c = state.lookup(ctx, args[0])
    if c.status != "running":
        raise Improper("can only create exec sessions on running containers: container state improper",
                       fix=f"{args[0]} is {c.status}; see pirun ps -a")
    from runtime.lifecycle import exec as X
    return X.run(c, args[1:], opts)


# --- healthcheck run ----------------------------------------------------------------------------------------------
HEALTHCHECK_USAGE = "pirun healthcheck run NAME|ID"


@_command
def healthcheck_run(argv, ctx):
    """Run the container's health check once now, as its monitor does, and record the result: exit 0 when it
    passed, 1 (printing "unhealthy") when it failed, 125 when there is no check to run."""
    _, args = _parse(argv, {}, HEALTHCHECK_USAGE)
    if len(args) != 1:
        raise SpecError("healthcheck run takes one container", fix=HEALTHCHECK_USAGE)
    c = state.lookup(ctx, args[0])
    hc = c.config.get("healthcheck")
    if not hc:
        raise PirunError(f"container {c.id[:12]} has no defined healthcheck",
                         fix=f"give the check when starting it: pirun run --health-cmd CMD --name {c.name} ...")
    if c.status != "running":
        raise Improper(f"container {c.id[:12]} is not running: container state improper",
                       fix=f"{args[0]} is {c.status}; see pirun ps -a")
    from runtime.lifecycle import health
    result = health.run_check(c, hc)
    now = health.record(c, hc, result)
    if now is not None and now["Status"] == "unhealthy":
        if hc["on_failure"] == "kill":
            _kill_now(c)
        elif hc["on_failure"] == "stop":
            stop_container(c, int(health.STOP_TIMEOUT))
    if result["ExitCode"] != 0:
        sys.stdout.write("unhealthy\n")
        return 1
    return 0


# --- stats -------------------------------------------------------------------------------------------------------
STATS_USAGE = "pirun stats [--no-stream] [NAME|ID...]"


@_command
def stats(argv, ctx):
    opts, args = _parse(argv, {"--no-stream": ("no_stream", False), "-a": ("all", False),
                               "--all": ("all", False)}, STATS_USAGE)
    if args:
        targets = [state.lookup(ctx, ref) for ref in args]
    else:
        targets = [c for c in state.load_all(ctx) if c.status == "running"]
    for c in targets:
        if c.status != "running":
            raise Improper(f"{c.name} is {c.status}: stats are kept for running containers only")
        if not c.state.get("cgroup"):
            raise PirunError(f"stats {c.name}: the container has no cgroup of its own (no delegated cgroup v2 "
                             "was found when it started)",
                             fix="run it where run.py --check reports a usable cgroup (the pirun_cgroup role)")
    first = True
    prev = {c.id: (_cpu_usec(c), time.monotonic()) for c in targets}
    while True:
        time.sleep(0.5 if first else 1.0)
        rows = [("ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "PIDS")]
        for c in targets:
            leaf = c.state["cgroup"]
            usec, t = _cpu_usec(c), time.monotonic()
            pu, pt = prev[c.id]
            prev[c.id] = (usec, t)
            cpu = 100.0 * (usec - pu) / 1e6 / max(t - pt, 1e-6) if usec is not None and pu is not None else 0.0
            mem = _read_int(f"{leaf}/memory.current")
            limit = _read_int(f"{leaf}/memory.max")
            pids = _read_int(f"{leaf}/pids.current")
            from runtime.sizes import format_size
            mem_s = format_size(mem) if mem is not None else "--"
            lim_s = format_size(limit) if limit is not None else "unlimited"
            pct = f"{100.0 * mem / limit:.2f}%" if mem is not None and limit else "--"
            rows.append((c.id[:12], c.name, f"{cpu:.2f}%", f"{mem_s} / {lim_s}", pct,
                         str(pids) if pids is not None else "--"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        sys.stdout.write("".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n" for r in rows))
        sys.stdout.flush()
        first = False
        if opts.get("no_stream"):
            return 0


def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cpu_usec(c):
    try:
        with open(f"{c.state['cgroup']}/cpu.stat") as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == "usage_usec":
                    return int(v)
    except (OSError, ValueError):
        pass
    return None
