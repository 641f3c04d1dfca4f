"""Host-side checks of -p specs, before any helper starts: what only the host can tell."""
from runtime.errors import NetworkError


def unprivileged_port_start():
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1024


def port_label(p):
    ip = p.host_ip or "0.0.0.0"
    if ":" in ip:
        ip = f"[{ip}]"
    return f"{ip}:{p.host_port}:{p.container_port}/{p.proto}"


def check_ports(publish, tool, ipv4_only=False):
    """Validate what only the host can tell about -p specs, before anything starts: the host address is one
    of this host's, the host port is free (bind it, as the helper will) and allowed for this user. All specs
    are bound at once, so two specs claiming the same host port collide here too. Imports _socket (cheap)
    only when -p is used."""
    import _socket
    held = []
    try:
        for p in publish:
            ip = p.host_ip or "0.0.0.0"
            fam = _socket.AF_INET6 if ":" in ip else _socket.AF_INET
            label = f"-p {port_label(p)}"
            if p.proto not in ("tcp", "udp"):
                raise NetworkError(f"{label}: protocol {p.proto!r} not supported by {tool}",
                                   fix="use /tcp or /udp")
            if ipv4_only and fam != _socket.AF_INET:
                raise NetworkError(f"{label}: {tool} publishes on IPv4 host addresses only",
                                   fix="use an IPv4 host address (e.g. 127.0.0.1) or --net pasta")
            try:
                _socket.inet_pton(fam, ip)
            except OSError:
                raise NetworkError(f"{label}: {ip!r} is not an IP address", fix="give a numeric host IP") from None
            s = _socket.socket(fam, _socket.SOCK_STREAM if p.proto == "tcp" else _socket.SOCK_DGRAM)
            held.append(s)
            if p.proto == "tcp":   # as the helpers do: a port in TIME_WAIT is free, a listening one is not
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            try:
                s.bind((ip, p.host_port))
                if p.proto == "tcp":
                    s.listen(1)     # so that a second spec for the same port collides (SO_REUSEADDR)
            except OSError as e:
                import errno
                if e.errno == errno.EADDRINUSE:
                    raise NetworkError(f"{label}: host port {p.host_port}/{p.proto} on {ip} is already in use",
                                       fix="choose another host port (ss -lntup shows who holds it)") from None
                if e.errno == errno.EADDRNOTAVAIL:
                    raise NetworkError(f"{label}: {ip} is not an address of this host",
                                       fix="use 127.0.0.1, 0.0.0.0 or one of this host's addresses") from None
                if e.errno == errno.EACCES:
                    start = unprivileged_port_start()
                    raise NetworkError(f"{label}: host port {p.host_port} needs privileges (ports below {start})",
                                       fix=f"use a host port >= {start}, or sysctl -w "
                                           f"net.ipv4.ip_unprivileged_port_start={p.host_port}") from None
                raise NetworkError(f"{label}: bind {ip}:{p.host_port}: {e.strerror}") from None
    finally:
        for s in held:
            s.close()
