"""The backends on their own, as the test user, against a namespace made with `unshare -Urn` (no run.py):
ready means configured (checked with pyroute2 at once), failures are one line and leave nothing running,
poll() notices a dead helper, pasta does not leak the host's loopback ports into the container."""
import json
import os
import signal
import sys
import time

import pytest

from conftest import user_env, user_kwargs
from net_helpers import REPO, HostHTTP, Standalone, helpers_of, require_net_prereqs, still_alive

VENV_PY = REPO / ".venv" / "bin" / "python"

PYROUTE2_DUMP = r"""
import json
from pyroute2 import IPRoute
with IPRoute() as ip:
    links = {l.get_attr("IFLA_IFNAME"): {"mtu": l.get_attr("IFLA_MTU"), "up": bool(l["flags"] & 1)}
             for l in ip.get_links()}
    addrs = [(a.get_attr("IFA_LABEL"), a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ip.get_addr(family=2)]
    routes = [(r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY")) for r in ip.get_routes(family=2)
              if r["table"] == 254]
print(json.dumps({"links": links, "addrs": addrs, "routes": routes}))
"""


@pytest.fixture(scope="module", autouse=True)
def prereqs():
    require_net_prereqs(user_kwargs(), user_env())
    if not VENV_PY.exists():
        pytest.fail(f"prerequisite missing: {VENV_PY} with pyroute2; fix: run scripts/setup as root",
                    pytrace=False)


@pytest.fixture
def standalone():
    made = []

    def make(**cfg):
        s = Standalone(cfg, user_kwargs(), user_env())
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def netlink_state(s):
    r = s.ns([str(VENV_PY), "-c", PYROUTE2_DUMP])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_slirp4netns_ready_means_configured(standalone):
    s = standalone(mode="slirp4netns")
    assert "error" not in s.info, s.info
    st = netlink_state(s)
    assert st["links"]["tap0"] == {"mtu": 65520, "up": True}
    assert st["links"]["lo"]["up"]
    assert ["tap0", "10.0.2.100", 24] in st["addrs"]
    assert [None, 0, "10.0.2.2"] in st["routes"]


def test_pasta_ready_means_configured(standalone):
    s = standalone(mode="pasta")
    assert "error" not in s.info, s.info
    st = netlink_state(s)
    ifaces = [n for n in st["links"] if n != "lo"]
    assert len(ifaces) == 1 and st["links"][ifaces[0]] == {"mtu": 65520, "up": True}, st
    assert any(r[1] == 0 and r[2] for r in st["routes"]), st        # a default route with a gateway


def test_helper_is_a_child_of_the_caller_in_its_own_session(standalone):
    for mode in ("slirp4netns", "pasta"):
        s = standalone(mode=mode)
        helpers = helpers_of(s.proc.pid)
        assert [k[0] for k in helpers] == [s.info["helper"]], (mode, helpers)
        with open(f"/proc/{s.info['helper']}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        assert int(fields[3]) == s.info["helper"], f"{mode} shares a session with the caller"


@pytest.mark.parametrize("mode", ["slirp4netns", "pasta"])
def test_poll_reports_a_dead_helper(standalone, mode):
    s = standalone(mode=mode)
    assert s.command("poll") == {"poll": None}
    os.kill(s.info["helper"], signal.SIGKILL)
    notice = None
    for _ in range(200):                # the kernel needs a moment to turn it into a zombie
        notice = s.command("poll")["poll"]
        if notice:
            break
        time.sleep(0.01)
    assert notice and mode in notice and "signal 9" in notice and "\n" not in notice


@pytest.mark.parametrize("mode", ["slirp4netns", "pasta"])
def test_start_failure_is_one_line_and_leaves_nothing(mode):
    """Target PID 1, whose namespaces the user cannot join: NetworkError (125), one line, no child left."""
    bad = _run_driver_against_pid1(mode)
    assert bad["code"] == 125 and mode in bad["error"] and "\n" not in bad["error"], bad


def _run_driver_against_pid1(mode):
    import subprocess
    code = (f"import sys, json; sys.path.insert(0, {str(REPO)!r})\n"
            "from runtime.spec import NetSpec\nfrom runtime.net import backend_for\n"
            "from runtime.errors import PirunError\n"
            f"b = backend_for(NetSpec(mode={mode!r}))\n"
            "b.prepare()\n"
            "try:\n    b.start(1)\nexcept PirunError as e:\n"
            "    import os\n"
            "    def ppid(p):\n"
            "        try:\n"
            "            return open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[1]\n"
            "        except OSError:\n"
            "            return None\n"
            "    kids = [p for p in os.listdir('/proc') if p.isdigit() and ppid(p) == str(os.getpid())]\n"
            "    print(json.dumps({'error': e.line(), 'code': e.exit_code, 'children': kids}))\n"
            "    b.stop()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=user_env(), timeout=30,
                       **user_kwargs())
    assert r.stdout, r.stderr
    out = json.loads(r.stdout)
    assert out["children"] == [], f"{mode} left children behind after a failed start: {out}"
    return out


HTTP_GET = r"""
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status, r.reason, r.read().decode(), end="")
except OSError as e:
    sys.exit(f"GET {sys.argv[1]}: {getattr(e, 'reason', e)}")
"""


def _http_get(s, addr, port):
    """GET http://addr:port/ inside the namespace: "200 OK <body>" and 0, or the error and 1."""
    return s.ns([str(VENV_PY), "-I", "-c", HTTP_GET, f"http://{addr}:{port}/"])


def _gateway(s):
    return next(r[2] for r in netlink_state(s)["routes"] if r[1] == 0 and r[2])


def test_pasta_does_not_forward_host_loopback_ports_into_the_container(standalone):
    """-T none: pasta's default would make the host's 127.0.0.1 ports appear on the container's loopback.
    Control: with allow_host_loopback the same server answers through the gateway address, in the same
    namespace, with the same client."""
    with HostHTTP() as srv:
        s = standalone(mode="pasta", allow_host_loopback=True)
        assert "error" not in s.info, s.info
        gw = _gateway(s)
        control = _http_get(s, gw, srv.port)
        assert control.returncode == 0, (control.returncode, control.stderr)
        assert control.stdout == "200 OK hello from the host\n", control.stdout
        own = _http_get(s, "127.0.0.1", srv.port)
        assert own.returncode == 1 and own.stdout == "", (own.returncode, own.stdout, own.stderr)
        assert "Connection refused" in own.stderr, own.stderr


def test_slirp4netns_exit_fd_ends_helper_when_driver_is_killed(standalone):
    s = standalone(mode="slirp4netns")
    keys = list(helpers_of(s.proc.pid))
    s.proc.kill()
    s.proc.wait()
    assert not still_alive(keys, 2.0)


def test_pasta_pdeathsig_ends_helper_when_driver_is_killed(standalone):
    s = standalone(mode="pasta")
    keys = list(helpers_of(s.proc.pid))
    s.proc.kill()
    s.proc.wait()
    assert not still_alive(keys, 2.0)


@pytest.mark.parametrize("mode", ["slirp4netns", "pasta"])
def test_host_port_taken_after_prepare_is_one_line_and_leaves_nothing(standalone, mode):
    """The race prepare() cannot close: the port is taken between the check and the helper's bind."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        st = standalone(mode=mode, skip_port_check=True,
                        publish=[{"host_ip": "127.0.0.1", "host_port": port, "container_port": 80}])
    finally:
        s.close()
    info = st.info
    assert info.get("code") == 125 and str(port) in info["error"] and "\n" not in info["error"], info
    assert info["children"] == [], f"{mode} left processes behind: {info}"
