"""Network backends: one small interface, one file per backend, imported only when chosen.

The launcher (host side) drives a backend in this order:
    prepare()              before fork: probe the helper, validate options; raise NetworkError
    resolv_conf(), hosts() contents the init side bind-mounts on /etc/resolv.conf and /etc/hosts
    start(pid)             after process I has its user and network namespaces; returns when ready
    watch_fds()            fds that become readable when the helper dies (a pidfd); () without a helper
    poll()                 when a watched fd is readable: a one-line notice if the helper died, else None
    stop()                 on every exit path; idempotent; leaves no process behind
The init side brings `lo` up itself in every mode but host.
"""

BACKENDS = ("slirp4netns", "pasta", "none", "host")

# The default --net of each use; hostconfig `net` and --net override it. slirp4netns with pirun's splice port
# forwarder is as fast as pasta through -p, starts within a few ms of --net none and costs ~5 MB (README,
# Networking); pasta's costs (15-25 ms of zero-filled buffers at every start, ~20-29 MB PSS) buy outbound speed,
# IPv6 and clients' source addresses, which a host opts into with `net = pasta`.
DEFAULTS = {"foreground": "slirp4netns", "detached": "slirp4netns", "service": "slirp4netns"}


def default_mode(detach=False, environ=None):
    """The default network mode for this use: "detached" (pirun run -d), "service" (run by systemd, which sets
    INVOCATION_ID in a unit's environment) or "foreground"."""
    if detach:
        use = "detached"
    elif environ is not None and environ.get("INVOCATION_ID"):
        use = "service"
    else:
        use = "foreground"
    return DEFAULTS[use]


class NetBackend:
    unshare_net = True

    def __init__(self, spec):
        self.spec = spec          # runtime.spec.NetSpec

    def prepare(self):
        pass

    def resolv_conf(self):
        return ""

    def hosts(self, hostname):
        return (f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                f"127.0.1.1\t{hostname}\n")

    def start(self, pid):
        pass

    def watch_fds(self):
        return ()

    def poll(self):
        return None

    def stop(self):
        pass


def backend_for(spec):
    """Return the backend for a NetSpec, importing only that backend's module."""
    mode = spec.mode
    if mode == "none":
        from runtime.net.none import NoneBackend as cls
    elif mode == "host":
        from runtime.net.host import HostBackend as cls
    elif mode == "slirp4netns":
        from runtime.net.slirp4netns import Slirp4netnsBackend as cls
    elif mode == "pasta":
        from runtime.net.pasta import PastaBackend as cls
    else:  # cli.py only lets BACKENDS through
        raise ValueError(mode)
    return cls(spec)


def host_search_domains(path="/etc/resolv.conf"):
    """The host's `search` domains, kept in the container's resolv.conf."""
    domains = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("search", "domain"):
                    domains = parts[1:]
    except OSError:
        pass
    return domains
