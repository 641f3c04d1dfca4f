"""--net none: a private network namespace with only `lo`, brought up by the init side."""
from runtime.errors import NetworkError
from runtime.net import NetBackend


class NoneBackend(NetBackend):
    def prepare(self):
        if self.spec.publish:
            raise NetworkError("--publish needs a network", fix="use --net slirp4netns or --net pasta")
        if self.spec.allow_host_loopback:
            raise NetworkError("--allow-host-loopback needs a network",
                               fix="use --net slirp4netns or --net pasta")
