"""argv -> Spec, without starting anything."""
import pytest

from runtime import caps, cli
from runtime.errors import SpecError


def parse(argv, **kw):
    kw.setdefault("stdin_tty", False)
    kw.setdefault("stdout_tty", False)
    kw.setdefault("environ", {"TERM": "vt220", "FROM_HOST": "yes"})
    action, payload = cli.parse(["--allow-root", "--rootfs", "/"] + argv, **kw)
    assert action == "run"
    return payload[0]


def test_defaults():
    s = parse([])
    assert s.argv == ("/bin/sh",)
    assert s.hostname == "myhost"
    assert s.net.mode == "slirp4netns"
    assert s.workdir == "/"
    assert s.caps == tuple(sorted(caps.NUMBER[c] for c in caps.DEFAULT))
    assert s.tty is False and s.init is False and s.seccomp is True
    env = dict(s.env)
    assert env["HOME"] == "/root" and env["HOSTNAME"] == "myhost" and "TERM" not in env


def test_command_stops_option_parsing():
    s = parse(["--net", "none", "ls", "--net", "-l"])
    assert s.argv == ("ls", "--net", "-l")
    assert parse(["--", "--weird"]).argv == ("--weird",)


def test_short_options_and_equals():
    s = parse(["-it", "-eA=1", "-e", "FROM_HOST", "-e", "UNSET_ONE", "--hostname=h1", "-w/tmp", "true"])
    assert s.tty is True
    env = dict(s.env)
    assert env["A"] == "1" and env["FROM_HOST"] == "yes" and "UNSET_ONE" not in env
    assert env["TERM"] == "vt220"
    assert s.hostname == "h1" and s.workdir == "/tmp"


def test_tty_auto_detection():
    assert parse(["true"], stdin_tty=True, stdout_tty=True).tty is True
    assert parse(["true"], stdin_tty=True, stdout_tty=False).tty is False
    assert parse(["-T", "true"], stdin_tty=True, stdout_tty=True).tty is False


@pytest.mark.parametrize("text, want", [
    ("8080:80", ("0.0.0.0", 8080, 80, "tcp")),
    ("127.0.0.1:8080:80/udp", ("127.0.0.1", 8080, 80, "udp")),
    ("[::1]:8443:443", ("::1", 8443, 443, "tcp")),
])
def test_publish(text, want):
    p = cli.parse_publish("-p", text)
    assert (p.host_ip, p.host_port, p.container_port, p.proto) == want


@pytest.mark.parametrize("text", ["80", "a:b", "1:2:3:4", "127.0.0.1:70000:80", "8080:80/sctp", "x.y:1:2", ""])
def test_publish_rejects(text):
    with pytest.raises(SpecError):
        cli.parse_publish("-p", text)


def test_caps_add_drop_all():
    assert parse(["--cap-drop", "ALL", "--cap-add", "net_raw"]).caps == (caps.NUMBER["NET_RAW"],)
    assert caps.NUMBER["SYS_ADMIN"] in parse(["--cap-add", "ALL"]).caps
    with pytest.raises(SpecError, match="both name"):
        parse(["--cap-add", "KILL", "--cap-drop", "kill"])


def test_limits_parsed():
    s = parse(["--memory", "16M", "--pids", "64", "--cpus", "0.5", "--stats"])
    assert s.limits.memory == 16 * 1024 * 1024
    assert s.limits.pids == 64 and s.limits.cpus == 0.5 and s.limits.stats
    with pytest.raises(SpecError, match="needs --memory"):
        parse(["--memory-swap", "1G"])


@pytest.mark.parametrize("argv", [["--nope"], ["--hostname="], ["--read-only=yes"], ["--net", "bridge"],
                                  ["--hostname", "a b"], ["-w", "rel"], ["-e", "=x"], ["--tty", "--no-tty"],
                                  ["--hostname", "a", "--hostname", "b"], ["--security-opt", "label=x"],
                                  ["-v", "/:/"], ["-v", "/tmp:/a", "-v", "/tmp:/a/"], ["--cpus", "0"]])
def test_bad_input_is_a_spec_error(argv):
    with pytest.raises(SpecError) as e:
        parse(argv + ["true"])
    assert "\n" not in e.value.line()


def test_spec_is_immutable():
    s = parse([])
    with pytest.raises(AttributeError):
        s.hostname = "x"
    assert s.replace(hostname="x").hostname == "x" and s.hostname == "myhost"


def test_help_and_check_actions():
    assert cli.parse(["--help"])[0] == "help"
    assert cli.parse(["--check"]) == ("check", None)
    assert cli.parse(["--rootfs", "/r", "--check"]) == ("check", "/r")
