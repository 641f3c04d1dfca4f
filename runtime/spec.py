"""The container spec: plain, immutable values produced by cli.py and read by everything after it.

No dataclasses here on purpose: importing dataclasses costs ~11 ms (it pulls in inspect), more than a third of
run.py's start-up budget. `Record` gives the same guarantees we rely on: named fields, defaults, immutability,
equality and a readable repr.
"""
from runtime.net import DEFAULTS as _net_defaults


class Record:
    __slots__ = ()
    _defaults = {}

    def __init__(self, **fields):
        defaults = self._defaults
        for name in self.__slots__:
            if name in fields:
                value = fields.pop(name)
            elif name in defaults:
                value = defaults[name]
            else:
                raise TypeError(f"{type(self).__name__}: missing field {name!r}")
            object.__setattr__(self, name, value)
        if fields:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(fields)}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def replace(self, **changes):
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return type(self)(**fields)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self):
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self):
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"


class PortSpec(Record):
    """-p/--publish [HOST_IP:]HOST_PORT:CONTAINER_PORT[/tcp|/udp]"""
    __slots__ = ("host_ip", "host_port", "container_port", "proto")
    _defaults = {"host_ip": "127.0.0.1", "proto": "tcp"}


class NetSpec(Record):
    __slots__ = ("mode", "publish", "allow_host_loopback")
    _defaults = {"mode": _net_defaults["foreground"], "publish": (), "allow_host_loopback": False}


class Limits(Record):
    """cgroup v2 limits. None means: not requested. Sizes in bytes."""
    __slots__ = ("memory", "memory_swap", "pids", "cpus", "cpu_weight", "stats")
    _defaults = {"memory": None, "memory_swap": None, "pids": None, "cpus": None, "cpu_weight": None,
                 "stats": False}

    def requested(self):
        return any(v is not None for v in (self.memory, self.memory_swap, self.pids, self.cpus,
                                            self.cpu_weight))


class Volume(Record):
    """-v HOST:CTR[:ro]; host is an absolute, resolved host path; target an absolute container path."""
    __slots__ = ("host", "target", "read_only")
    _defaults = {"read_only": False}


class Spec(Record):
    __slots__ = (
        "argv",          # tuple[str]: the command and its arguments
        "rootfs",        # absolute path of the root filesystem on the host
        "hostname",
        "env",           # tuple[(name, value)]: the complete environment of the command
        "workdir",       # absolute path inside the container
        "read_only",     # mount the rootfs read-only
        "volumes",       # tuple[Volume]
        "caps",          # tuple[int]: capability numbers kept (bounding, permitted, effective)
        "init",          # --init: a reaper is PID 1
        "tty",           # give the command a pseudo-terminal
        "net",           # NetSpec
        "limits",        # Limits
        "seccomp",       # True: default seccomp filter
        "allow_root",    # run.py run by real root on purpose
        "overlay",       # Overlay or None: the rootfs is an overlay mounted by the container side (images)
        "user",          # (uid, gid) the command runs as, or None: root (0, 0) as run.py does
    )
    _defaults = {"hostname": "myhost", "env": (), "workdir": "/", "read_only": False, "volumes": (),
                 "init": False, "tty": False, "net": NetSpec(), "limits": Limits(), "seccomp": True,
                 "allow_root": False, "overlay": None, "user": None}


class Overlay(Record):
    """A container's root as an overlay (runtime.image.overlay), mounted on Spec.rootfs before it is bound.
    lowers: layer directories, topmost first; upper/work: the writable layer (None: read-only);
    driver: "overlay" (native, userxattr) or "fuse-overlayfs"; mkdirs: ((path, is_dir), ...) volume targets the
    image lacks, created in the writable layer; remove: (dir fd, name) of the writable layer that process I
    removes when the container ends (unnamed foreground containers), or None; volatile: a throwaway layer,
    never synced to disk (overlayfs `volatile`: the unmount does not sync the whole host filesystem)."""
    __slots__ = ("lowers", "upper", "work", "driver", "mkdirs", "remove", "volatile")
    _defaults = {"upper": None, "work": None, "driver": "overlay", "mkdirs": (), "remove": None,
                 "volatile": False}


class RunOptions(Record):
    """What `pirun run` adds to a Spec: the image and the container's lifecycle. None/False: not given.
    `explicit` names the options the user gave that an image's config would otherwise decide
    (workdir, env, user, entrypoint); `env_names` the variables given with -e; `rootfs_overlay`: --rootfs DIR:O
    (DIR is the read-only lower layer of a throwaway overlay); `replace`: --replace (a container of that name
    goes first). health_*: podman's --health-* options (runtime.lifecycle.health: health_cmd a Test tuple,
    durations in seconds, health_interval 0 for `disable`), each named in `explicit` when given;
    no_healthcheck: --no-healthcheck."""
    __slots__ = ("image", "detach", "name", "remove", "replace", "platform", "pull", "user", "entrypoint",
                 "log_driver", "log_opts", "explicit", "env_names", "rootfs_overlay", "health_cmd",
                 "health_interval", "health_retries", "health_start_period", "health_timeout", "health_on_failure",
                 "no_healthcheck")
    _defaults = {"image": None, "detach": False, "name": None, "remove": False, "replace": False, "platform": None,
                 "pull": None, "user": None, "entrypoint": None, "log_driver": None, "log_opts": (),
                 "explicit": frozenset(), "env_names": frozenset(), "rootfs_overlay": False, "health_cmd": None,
                 "health_interval": None, "health_retries": None, "health_start_period": None,
                 "health_timeout": None, "health_on_failure": None, "no_healthcheck": False}
