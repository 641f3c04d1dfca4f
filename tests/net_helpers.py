"""Helpers for the network tests (tests/container/test_network*.py) and benchmarks (bench/net_*.py).

Traffic stays on this machine: servers bind 127.0.0.1 on the host or live inside namespaces the tests create.

Run as a program (root only), it is the development shim for hosts whose /dev/net/tun is 0600 root (no udev):

    python3 tests/net_helpers.py tunshim -- .venv/bin/pytest tests/container/test_network.py

runs the command in a private mount namespace where /dev/net/tun is a 0666 node for the same device (Debian's
udev default), on a tmpfs that is gone with the namespace: nothing changes on the host.
"""
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
HELPER_NAMES = ("slirp4netns", "pasta", "passt", "pasta.avx2", "passt.avx2")


def fail_missing(what, fix):
    import pytest
    pytest.fail(f"prerequisite missing: {what}; fix: {fix}", pytrace=False)


def require_net_prereqs(user_kwargs, env, tools=("slirp4netns", "pasta")):
    """Fail (never skip) naming what is missing for user-mode networking as the test user."""
    for tool in tools:
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, env=env).returncode:
            fail_missing(tool, f"apt-get install {'passt' if tool == 'pasta' else tool}")
    r = subprocess.run(["sh", "-c", "test -r /dev/net/tun && test -w /dev/net/tun"], env=env, **user_kwargs)
    if r.returncode:
        mode = oct(os.stat("/dev/net/tun").st_mode & 0o777) if os.path.exists("/dev/net/tun") else "absent"
        fail_missing(f"/dev/net/tun read/write for the test user (mode {mode})",
                     "chmod 0666 /dev/net/tun (Debian's udev default), or on a dev host run the tests under "
                     "`python3 tests/net_helpers.py tunshim -- ...` as root")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class HostHTTP:
    """A tiny HTTP server on the host's 127.0.0.1 that answers every GET with `body`."""

    def __init__(self, body=b"hello from the host\n"):
        payload = body

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def http_get(url, timeout=2.0):
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_http(url, timeout=15.0):
    """GET url until it answers (the container's server needs a moment to start); return the body."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            return http_get(url)
        except OSError as e:
            last = e
            time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout} s: {last}")


def _stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    rest = s.rsplit(")", 1)[1].split()
    return comm, rest[0], int(rest[1]), int(rest[19])      # comm, state, ppid, starttime


def helper_processes(uid=None):
    """{(pid, starttime): comm} of live slirp4netns/pasta processes (optionally of one uid)."""
    out = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        st = _stat(e)
        if st is None or st[1] == "Z":
            continue
        try:
            exe = os.path.basename(os.readlink(f"/proc/{e}/exe"))
        except OSError:
            exe = st[0]
        if exe not in HELPER_NAMES and st[0] not in HELPER_NAMES:
            continue
        if uid is not None:
            try:
                if os.stat(f"/proc/{e}").st_uid != uid:
                    continue
            except OSError:
                continue
        out[(int(e), st[3])] = exe
    return out


def helpers_of(pid):
    """Live helper processes whose parent is pid (run.py, or a test driver)."""
    return {k: v for k, v in helper_processes().items() if (_stat(k[0]) or (0, 0, 0))[2] == pid}


def still_alive(keys, timeout=2.0):
    """Of the (pid, starttime) keys, those still alive (not zombies, same start time) after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for pid, start in keys:
            st = _stat(pid)
            if st is not None and st[1] != "Z" and st[3] == start:
                left.append(pid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


# --- standalone driver: a backend against a namespace made with `unshare -Urn` ---------------------------------
DRIVER = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from runtime.spec import NetSpec, PortSpec
from runtime.net import backend_for
cfg = json.loads(sys.argv[2])
holder = subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", "unshare", "-Urn", "sh", "-c",
                           "echo x; exec sleep 3600"], stdout=subprocess.PIPE)   # dies with the driver
holder.stdout.readline()
spec = NetSpec(mode=cfg["mode"], allow_host_loopback=cfg.get("allow_host_loopback", False),
               publish=tuple(PortSpec(**p) for p in cfg.get("publish", ())))
b = backend_for(spec)
if cfg.get("skip_port_check"):       # simulate losing the race for a host port after prepare()
    from runtime.net import ports
    ports.check_ports = lambda *a, **k: None
t0 = time.perf_counter()
try:
    b.prepare()
    b.start(holder.pid)
except Exception as e:
    holder.kill()
    holder.wait()
    def _ppid(p):
        try:
            with open(f"/proc/{p}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[1]
        except OSError:           # exited while we listed /proc
            return None
    kids = [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == str(os.getpid())]
    print(json.dumps({"error": getattr(e, "line", lambda: str(e))(), "code": getattr(e, "exit_code", 1),
                      "children": kids}), flush=True)
    sys.exit(3)
ms = (time.perf_counter() - t0) * 1000
print(json.dumps({"holder": holder.pid, "helper": b._pid, "ms": ms, "resolv": b.resolv_conf(),
                  "hosts": b.hosts("box"), "watch": list(b.watch_fds())}), flush=True)
for line in sys.stdin:
    if line.strip() == "poll":
        print(json.dumps({"poll": b.poll()}), flush=True)
    elif line.strip() == "stop":
        break
b.stop()
holder.kill()
holder.wait()
print(json.dumps({"stopped": True}), flush=True)
"""


class Standalone:
    """Drive one backend as the test user: a namespace holder (`unshare -Urn`), prepare(), start(); then
    `ns(cmd)` runs a command inside the holder's user+network namespaces (host filesystem)."""

    def __init__(self, cfg, user_kwargs, env):
        import json
        self.json = json
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(REPO), json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     **user_kwargs)
        self.user_kwargs, self.env = user_kwargs, env
        self.info = json.loads(self.proc.stdout.readline() or '{"error": "driver died"}')

    def ns(self, cmd, **kw):
        argv = ["nsenter", "-t", str(self.info["holder"]), "-U", "-n", "--preserve-credentials"] + list(cmd)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 30)
        return subprocess.run(argv, env=self.env, **self.user_kwargs, **kw)

    def ns_popen(self, cmd, **kw):
        argv = ["nsenter", "-t", str(self.info["holder"]), "-U", "-n", "--preserve-credentials"] + list(cmd)
        return subprocess.Popen(argv, env=self.env, **self.user_kwargs, **kw)

    def command(self, word):
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        return self.json.loads(self.proc.stdout.readline())

    def close(self):
        if self.proc.poll() is None:
            try:
                self.command("stop")
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _tunshim(argv):
    if os.geteuid() != 0:
        sys.exit("tunshim: run as root (it makes a private mount namespace)")
    script = ('d=$(mktemp -d) && mount -t tmpfs -o mode=700 tmpfs "$d" && mknod -m 666 "$d/tun" c 10 200 && '
              'mount --bind "$d/tun" /dev/net/tun && umount -l "$d" && rmdir "$d" && exec "$@"')
    os.execvp("unshare", ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "tunshim"] + argv)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "tunshim" and sys.argv[2] == "--":
        _tunshim(sys.argv[3:])
    sys.exit("usage: net_helpers.py tunshim -- COMMAND [ARG...]")
