"""--net host: the host's network namespace (no network isolation, as podman's --network host)."""
from runtime.errors import NetworkError
from runtime.net import NetBackend


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


class HostBackend(NetBackend):
    unshare_net = False

    def prepare(self):
        if self.spec.publish:
            raise NetworkError("--publish has no effect with --net host",
                               fix="drop -p; services bind the host's ports directly")

    def resolv_conf(self):
        return _read("/etc/resolv.conf")

    def hosts(self, hostname):
        return _read("/etc/hosts") + f"127.0.1.1\t{hostname}\n"
