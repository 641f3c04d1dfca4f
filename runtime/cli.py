"""argv -> Spec. Every option check runs here, before anything is started.

A hand-written parser on purpose: argparse costs 6 ms to import and prints multi-line usage on errors; we want
one line and exit code 125 for every mistake.
"""
import os

from runtime import caps
from runtime.errors import SpecError
from runtime.spec import Limits, NetSpec, PortSpec, Spec, Volume

VERSION = "0.1.0"

USAGE = "usage: run.py [OPTIONS] [--] [COMMAND [ARG...]]"

HELP = f"""{USAGE}

Run COMMAND (default /bin/sh) in a rootless container: its own user, mount, PID, network, UTS, IPC and cgroup
namespaces, pivot_root into the rootfs, user-mode networking, cgroup v2 limits.

Container:
  --rootfs DIR             root filesystem (default: /etc/pirun/pirun.conf's rootfs, else the repo's
                           rootfs_arm on aarch64 hosts or rootfs_host elsewhere)
  --hostname NAME          hostname inside (default: myhost)
  -e, --env NAME[=VALUE]   set a variable (NAME alone copies it from run.py's environment)
  -w, --workdir DIR        working directory inside (default: /)
  -v, --volume HOST:CTR[:ro|rw]
                           bind-mount a host path; the target must exist in the rootfs
  --read-only              mount the rootfs read-only
  --init                   run a small reaper as PID 1 that forwards signals and reaps orphans
  -t, --tty / -T, --no-tty give the command a pseudo-terminal (default: when stdin and stdout are terminals)
  -i, --interactive        accepted for podman compatibility (stdin is always passed through)
Security:
  --cap-add CAP, --cap-drop CAP
                           change the capability set (default: podman's: {', '.join(caps.DEFAULT)});
                           ALL is accepted
  --security-opt seccomp=unconfined
                           disable the default seccomp filter
  --allow-root             allow real root to run pirun (it is meant for ordinary users)
Network:
  --net, --network MODE    slirp4netns (default), pasta, none (loopback only), host
  -p, --publish [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]
                           publish a port (HOST_IP default 0.0.0.0)
  --allow-host-loopback    let the container reach the host's 127.0.0.1 through 10.0.2.2
Resources (cgroup v2; a limit that cannot be applied is an error):
  -m, --memory SIZE        memory.max (2M, 512m, 1G, 1.5G); swap off unless --memory-swap
  --memory-swap SIZE       memory.swap.max
  --pids N                 pids.max (default 2048 when a usable cgroup exists)
  --cpus X                 CPU quota, e.g. 0.5
  --cpu-weight N           cpu.weight (1-10000)
  --stats                  print peak memory, CPU time and pids when the container ends
Other:
  --check                  check this host's prerequisites and exit (0 = all required items ok)
  -h, --help               this help
  --version                print the version

Exit status: the command's own; 125 runtime error; 126 command cannot be executed; 127 command not found;
128+N when the command was killed by signal N.
"""

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# option -> (key, takes a value)
_OPTIONS = {
    "--rootfs": ("rootfs", True),
    "--hostname": ("hostname", True),
    "-e": ("env", True), "--env": ("env", True),
    "-w": ("workdir", True), "--workdir": ("workdir", True),
    "-v": ("volume", True), "--volume": ("volume", True),
    "--read-only": ("read_only", False),
    "--init": ("init", False),
    "-t": ("tty", False), "--tty": ("tty", False),
    "-T": ("no_tty", False), "--no-tty": ("no_tty", False),
    "-i": ("interactive", False), "--interactive": ("interactive", False),
    "--cap-add": ("cap_add", True),
    "--cap-drop": ("cap_drop", True),
    "--security-opt": ("security_opt", True),
    "--allow-root": ("allow_root", False),
    "--net": ("net", True), "--network": ("net", True),
    "-p": ("publish", True), "--publish": ("publish", True),
    "--allow-host-loopback": ("allow_host_loopback", False),
    "-m": ("memory", True), "--memory": ("memory", True),
    "--memory-swap": ("memory_swap", True),
    "--pids": ("pids", True), "--pids-limit": ("pids", True),
    "--cpus": ("cpus", True),
    "--cpu-weight": ("cpu_weight", True),
    "--stats": ("stats", False),
    "--check": ("check", False),
    "-h": ("help", False), "--help": ("help", False),
    "--version": ("version", False),
}
# `pirun run` only: podman's container options that make no sense for the stateless run.py.
_RUN_OPTIONS = {
    "-d": ("detach", False), "--detach": ("detach", False),
    "--name": ("name", True),
    "--rm": ("remove", False),
    "--replace": ("replace", False),
    "--platform": ("platform", True),
    "--pull": ("pull", True),
    "-u": ("user", True), "--user": ("user", True),
    "--entrypoint": ("entrypoint", True),
    "--log-driver": ("log_driver", True),
    "--log-opt": ("log_opt", True),
    "--health-cmd": ("health_cmd", True),
    "--health-interval": ("health_interval", True),
    "--health-retries": ("health_retries", True),
    "--health-start-period": ("health_start_period", True),
    "--health-timeout": ("health_timeout", True),
    "--health-on-failure": ("health_on_failure", True),
    "--no-healthcheck": ("no_healthcheck", False),
}
_PIRUN_OPTIONS = {**_OPTIONS, **_RUN_OPTIONS}
_REPEATABLE = {"env", "volume", "cap_add", "cap_drop", "publish", "security_opt", "log_opt"}


def _split(argv, table=_OPTIONS):
    """Return ({key: value or [values]}, command argv)."""
    _OPTIONS = table                  # noqa: N806 - the option table of run.py or of `pirun run`
    opts = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            return opts, argv[i:]
        if not arg.startswith("-") or arg == "-":
            return opts, argv[i - 1:]
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            pending = [(name, value if eq else None)]
        elif len(arg) > 2 and all(f"-{c}" in _OPTIONS and not _OPTIONS[f"-{c}"][1] for c in arg[1:]):
            pending = [(f"-{c}", None) for c in arg[1:]]          # -it
        elif len(arg) > 2 and arg[:2] in _OPTIONS and _OPTIONS[arg[:2]][1]:
            pending = [(arg[:2], arg[2:])]                          # -eFOO=bar
        else:
            pending = [(arg, None)]
        for name, value in pending:
            if name not in _OPTIONS:
                raise SpecError(f"unknown option {name}", fix="see run.py --help")
            key, takes_value = _OPTIONS[name]
            if takes_value:
                if value is None:
                    if i >= len(argv):
                        raise SpecError(f"option {name} needs a value", fix="see run.py --help")
                    value = argv[i]
                    i += 1
            elif value is not None:
                raise SpecError(f"option {name} takes no value")
            else:
                value = True
            if key in _REPEATABLE:
                opts.setdefault(key, []).append((name, value))
            elif key in opts and takes_value:
                raise SpecError(f"option {name} given twice")
            else:
                opts[key] = (name, value)
    return opts, []


def _int(name, text, lo, hi):
    if not (text.isascii() and text.lstrip("+-").isdigit() and len(text) <= 12):
        raise SpecError(f"{name}: {text!r} is not a whole number" if not text.lstrip("+-").isdigit()
                        else f"{name}: {text} is out of range ({lo} to {hi})")
    try:
        n = int(text, 10)
    except ValueError:
        raise SpecError(f"{name}: {text!r} is not a whole number") from None
    if not lo <= n <= hi:
        raise SpecError(f"{name}: {n} is out of range ({lo} to {hi})")
    return n


def _check_text(name, text):
    if "\0" in text:
        raise SpecError(f"{name}: value contains a NUL byte")


def _ip(name, text):
    import _socket
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, text)
            return text
        except OSError:
            pass
    raise SpecError(f"{name}: {text!r} is not an IP address")


def parse_publish(name, text):
    """[HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp] -> PortSpec."""
    _check_text(name, text)
    spec, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise SpecError(f"{name} {text}: protocol must be tcp or udp")
    host_ip = "0.0.0.0"
    if spec.startswith("["):                       # [::1]:8080:80
        addr, sep, rest = spec[1:].partition("]:")
        if not sep:
            raise SpecError(f"{name} {text}: expected [IPv6]:HOST_PORT:CONTAINER_PORT")
        host_ip, ports = _ip(name, addr), rest.split(":")
    else:
        ports = spec.split(":")
        if len(ports) == 3:
            host_ip = _ip(name, ports[0])
            ports = ports[1:]
    if len(ports) != 2:
        raise SpecError(f"{name} {text}: expected [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]")
    return PortSpec(host_ip=host_ip, host_port=_int(f"{name} {text}: host port", ports[0], 1, 65535),
                    container_port=_int(f"{name} {text}: container port", ports[1], 1, 65535), proto=proto)


def _volume(name, text, cwd):
    _check_text(name, text)
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise SpecError(f"{name} {text}: expected HOST:CONTAINER[:ro|rw]")
    host, target = parts[0], parts[1]
    read_only = False
    if len(parts) == 3:
        for o in parts[2].split(","):
            if o == "ro":
                read_only = True
            elif o == "rw":
                read_only = False
            else:
                raise SpecError(f"{name} {text}: unknown volume option {o!r} (ro or rw)")
    host = os.path.realpath(os.path.join(cwd, host))
    try:
        os.stat(host)
    except OSError as e:
        raise SpecError(f"{name} {text}: host path {host}: {e.strerror}") from None
    if not target.startswith("/"):
        raise SpecError(f"{name} {text}: container path must be absolute")
    target = os.path.normpath(target)
    if target in ("/", "//"):
        raise SpecError(f"{name} {text}: cannot mount over the container's /")
    return Volume(host=host, target=target, read_only=read_only)


def _hostname(text):
    ok = 0 < len(text) <= 64 and text[0] not in "-." and all(c.isascii() and (c.isalnum() or c in "-.")
                                                             for c in text)
    if not ok:
        raise SpecError(f"--hostname: {text!r} is not a valid hostname (letters, digits, '-', '.'; 64 at most)")
    return text


def _capabilities(opts):
    adds = [(n, v, caps.parse(v)) for n, v in opts.get("cap_add", [])]
    drops = [(n, v, caps.parse(v)) for n, v in opts.get("cap_drop", [])]
    for n, v, c in adds + drops:
        if c is None:
            raise SpecError(f"{n}: unknown capability {v!r}")
    add = {c for _, _, c in adds}
    drop = {c for _, _, c in drops}
    both = (add & drop) - {"ALL"}
    if both:
        raise SpecError(f"--cap-add and --cap-drop both name {', '.join(sorted(both))}")
    if "ALL" in add:
        kept = set(caps.NAMES[:caps.last_cap() + 1])
    elif "ALL" in drop:
        kept = set()
    else:
        kept = set(caps.DEFAULT)
    kept |= add - {"ALL"}
    kept -= drop - {"ALL"}
    return tuple(sorted(caps.NUMBER[c] for c in kept))


def _limits(opts):
    values = {}
    for key in ("memory", "memory_swap"):
        if key in opts:
            from runtime.sizes import parse_size
            name, text = opts[key]
            values[key] = parse_size(text, name)
    if "pids" in opts:
        values["pids"] = _int(*opts["pids"], 1, 1 << 22)
    if "cpus" in opts:
        name, text = opts["cpus"]
        try:
            cpus = float(text)
        except ValueError:
            raise SpecError(f"{name}: {text!r} is not a number") from None
        ncpu = os.cpu_count() or 1
        if not 0.01 <= cpus <= ncpu:
            raise SpecError(f"{name}: {text} is out of range (0.01 to {ncpu}, the CPUs of this host)")
        values["cpus"] = cpus
    if "cpu_weight" in opts:
        values["cpu_weight"] = _int(*opts["cpu_weight"], 1, 10000)
    if "memory_swap" in values and "memory" not in values:
        raise SpecError("--memory-swap needs --memory")
    values["stats"] = "stats" in opts
    return Limits(**values)


def _env(opts, hostname, tty, environ):
    env = {"PATH": DEFAULT_PATH, "HOME": "/root", "HOSTNAME": hostname, "container": "pirun"}
    if tty:
        env["TERM"] = environ.get("TERM") or "xterm"
    for name, text in opts.get("env", []):
        _check_text(name, text)
        key, eq, value = text.partition("=")
        if not key or key.startswith(" "):
            raise SpecError(f"{name} {text!r}: expected NAME=VALUE or NAME")
        if eq:
            env[key] = value
        elif key in environ:
            env[key] = environ[key]
    return tuple(env.items())


def parse(argv, environ=None, stdin_tty=None, stdout_tty=None, cwd=None, pirun=False):
    """Return (action, payload): ("run", (Spec, HostConfig)) | ("check", rootfs) | ("help", text) |
    ("version", text). With pirun=True (`pirun run`), the run payload is (Spec, HostConfig, RunOptions): the
    first word after the options is the IMAGE unless --rootfs is given, and Spec.rootfs is "" until the image
    is resolved (runtime.cmd.run)."""
    environ = os.environ if environ is None else environ
    opts, command = _split(list(argv), _PIRUN_OPTIONS if pirun else _OPTIONS)
    if "help" in opts:
        return "help", HELP
    if "version" in opts:
        return "version", f"run.py (pirun) {VERSION}"
    if "check" in opts:
        rootfs = opts.get("rootfs", (None, None))[1]
        return "check", rootfs
    for key in ("hostname", "workdir", "rootfs"):
        if key in opts:
            _check_text(opts[key][0], opts[key][1])
    for text in command:
        _check_text("command", text)
    cwd = cwd or os.getcwd()

    from runtime import hostconfig
    cfg = hostconfig.load()

    hostname = _hostname(opts["hostname"][1]) if "hostname" in opts else "myhost"

    if "tty" in opts and "no_tty" in opts:
        raise SpecError("--tty and --no-tty contradict each other")
    if "tty" in opts:
        tty = True
    elif "no_tty" in opts:
        tty = False
    else:
        if stdin_tty is None:
            stdin_tty = os.isatty(0)
        if stdout_tty is None:
            stdout_tty = os.isatty(1)
        tty = stdin_tty and stdout_tty

    workdir = opts.get("workdir", (None, "/"))[1]
    if not workdir.startswith("/"):
        raise SpecError(f"--workdir {workdir}: must be an absolute path")

    volumes = tuple(_volume(n, v, cwd) for n, v in opts.get("volume", []))
    seen = set()
    for vol in volumes:
        if vol.target in seen:
            raise SpecError(f"--volume: two volumes mount on {vol.target}")
        seen.add(vol.target)

    seccomp = True
    for name, text in opts.get("security_opt", []):
        if text == "seccomp=unconfined":
            seccomp = False
        elif text in ("no-new-privileges", "no-new-privileges=true"):
            pass                                            # always on
        else:
            raise SpecError(f"{name} {text}: unsupported (seccomp=unconfined or no-new-privileges)")

    from runtime.net import BACKENDS, default_mode
    mode = opts["net"][1] if "net" in opts else (cfg.net or default_mode(pirun and "detach" in opts, environ))
    if mode not in BACKENDS:
        raise SpecError(f"--net {mode}: unknown network mode (choose {', '.join(BACKENDS)})")
    net = NetSpec(mode=mode, publish=tuple(parse_publish(n, v) for n, v in opts.get("publish", [])),
                  allow_host_loopback="allow_host_loopback" in opts)

    image = None
    if pirun and "rootfs" not in opts:
        if not command:
            raise SpecError("pirun run needs an IMAGE or --rootfs DIR", fix="pirun run [OPTIONS] IMAGE [COMMAND...]")
        image, command = command[0], command[1:]
        rootfs = ""
    elif "rootfs" in opts:
        text = opts["rootfs"][1]
        if pirun and text.endswith(":O"):            # podman's DIR:O: DIR as an overlay's read-only lower
            text = text[:-2]
        rootfs = os.path.realpath(os.path.join(cwd, text))
    else:
        rootfs = hostconfig.default_rootfs(_repo_dir(), cfg)
    if rootfs:
        hostconfig.require_rootfs(_repo_dir(), rootfs)

    allow_root = "allow_root" in opts
    if os.getuid() == 0 and not allow_root:
        raise SpecError("refusing to run as root: pirun runs containers for ordinary users",
                        fix="run as the container user (e.g. runuser -u pirun -- run.py ...) or pass --allow-root")

    spec = Spec(
        argv=tuple(command) or (() if image is not None else ("/bin/sh",)),
        rootfs=rootfs,
        hostname=hostname,
        env=_env(opts, hostname, tty, environ),
        workdir=os.path.normpath(workdir),
        read_only="read_only" in opts,
        volumes=volumes,
        caps=_capabilities(opts),
        init="init" in opts,
        tty=tty,
        net=net,
        limits=_limits(opts),
        seccomp=seccomp,
        allow_root=allow_root,
    )
    if pirun:
        return "run", (spec, cfg, _run_options(opts, image))
    return "run", (spec, cfg)


def _run_options(opts, image):
    """The `pirun run` options beyond run.py's (checked here; applied by runtime.cmd.run)."""
    from runtime.spec import RunOptions
    values = {"image": image, "detach": "detach" in opts, "remove": "remove" in opts, "replace": "replace" in opts,
              "explicit": frozenset(k for k in ("workdir", "env", "user", "entrypoint") if k in opts),
              "env_names": frozenset(text.partition("=")[0] for _, text in opts.get("env", [])),
              "rootfs_overlay": "rootfs" in opts and opts["rootfs"][1].endswith(":O")}
    for key in ("name", "platform", "pull", "user", "entrypoint", "log_driver"):
        if key in opts:
            _check_text(opts[key][0], opts[key][1])
            values[key] = opts[key][1]
    values["log_opts"] = tuple(v for _, v in opts.get("log_opt", []))
    if any(k.startswith(("health_", "no_health")) for k in opts):
        from runtime.lifecycle import health
        fields, explicit = health.options(opts)
        if explicit and not (values["detach"] or "name" in values):
            raise SpecError(f"{opts[min(explicit)][0]}: health checks are run by a recorded container's monitor",
                            fix="add --name NAME (foreground, as a service runs it) or -d")
        values.update(fields)
        values["explicit"] |= explicit
    return RunOptions(**values)


def _repo_dir():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
