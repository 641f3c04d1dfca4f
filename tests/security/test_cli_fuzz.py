"""Property tests over the command line: whatever the options and values, run.py's parser either returns an
action or raises a PirunError with exit code 125 and a one-line message; real runs only ever exit with a
documented code and print at most one error line, never a traceback."""
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import RUN, ROOTFS, user_env, user_kwargs
from runtime import cli
from runtime.errors import PirunError

OPTIONS = sorted(cli._OPTIONS)
ODD_OPTIONS = ["--", "-", "--foo", "-x", "-itT", "-it", "-ti", "-eA=1", "-v", "--net=none", "--hostname=",
               "--hostname=a=b", "--init=1", "--rootfs=", "-p8080:80", "--=", "---", "-e", "--security-opt="]
VALUES = [
    "", " ", "/", ".", "..", "none", "host", "slirp4netns", "pasta", "x" * 300, "0", "-1", "1", "65535", "65536",
    "99999999999999999999999", "9" * 5000, "1." + "5" * 5000, "nan", "inf", "-inf", "1e400", "0.001", "1.5G",
    "2MiB", "512m", "1t", "16XB", "٣", "１２", "\udcff", "é", "a:b", "a:b:c", "a:b:c:d", "/tmp:/mnt",
    "/tmp:/mnt:ro", "/tmp:/mnt:rw,ro", "/tmp:/mnt:xx", "/tmp:relative", "/tmp:/", "/tmp://", "/nonexistent:/mnt",
    "8080:80", "127.0.0.1:8080:80", "[::1]:8080:80", "[::1:8080:80", "1:2/udp", "1:2/sctp", "0:0", "a:b/tcp",
    "seccomp=unconfined", "no-new-privileges", "seccomp=/etc/x.json", "ALL", "all", "CAP_NET_RAW", "net_raw",
    "SYS_ADMIN", "NOPE", "FOO=bar", "FOO", "=x", " X=1", "PATH=", "-", "--", "--rootfs", str(ROOTFS),
    "/no/such/dir", "/etc/passwd", "\n", "a\nb", "\t", "-h", "my-host", ".host", "-host", "a" * 65, "a" * 64,
]
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
TOKEN = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(ODD_OPTIONS), st.sampled_from(VALUES), TEXT)
# an option followed by a value, most of the time: deeper paths through the parser than random tokens alone
PAIR = st.tuples(st.sampled_from(OPTIONS), st.one_of(st.sampled_from(VALUES), TEXT)).map(list)
ARGV = st.lists(st.one_of(PAIR, TOKEN.map(lambda t: [t])), max_size=8).map(lambda xs: [t for x in xs for t in x])


def _parse(argv):
    return cli.parse(argv, environ={"FOO": "host value", "TERM": "xterm"}, stdin_tty=False, stdout_tty=False,
                     cwd="/tmp")


def _check(argv):
    try:
        action, payload = _parse(argv)
    except PirunError as e:
        assert e.exit_code == 125, (argv, e.exit_code)
        line = e.line()
        assert line and "\n" not in line and "\r" not in line or _echoes_input(argv, line), (argv, line)
        return "error"
    assert action in ("run", "check", "help", "version"), action
    return action


def _echoes_input(argv, line):
    """A message may quote what the user typed (repr'd or not): a newline inside a value is the user's own."""
    return any(("\n" in a or "\r" in a) for a in argv)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ARGV)
def test_parser_only_returns_or_raises_one_line_spec_errors(argv):
    _check(argv)


@settings(max_examples=400, deadline=None)
@given(ARGV)
def test_parser_with_allow_root_reaches_every_check(argv):
    """pytest runs as root: without --allow-root most argv stop at the root check, which comes last."""
    _check(["--allow-root", "--rootfs", str(ROOTFS)] + argv)


VALUE_OPTIONS = sorted({o for o, (_k, v) in cli._OPTIONS.items() if v})


@pytest.mark.parametrize("option", VALUE_OPTIONS)
@pytest.mark.parametrize("value", ["\udcff", "/tmp/\udcff:/mnt", "9" * 5000, "1." + "9" * 5000, "0." + "1" * 4400])
def test_every_value_option_handles_odd_values(option, value):
    """Undecodable bytes arrive as lone surrogates; numbers of 4300+ digits trip Python's int() digit limit
    (ValueError, not SpecError) if a parser forgets it. Both can come from a real command line."""
    _check(["--allow-root", option, value, "true"])


@pytest.mark.parametrize("option", VALUE_OPTIONS)
@pytest.mark.parametrize("value", ["a\0b", "/tmp/a\0:/mnt", "/tmp:/mnt\0", "1\0:2", "127.0.0.1\0:1:2"])
def test_nul_bytes_are_spec_errors(option, value):
    """A NUL cannot come from a real command line (argv is C strings), but parse() is an API too and
    cli._check_text shows the intent: a SpecError, never a ValueError."""
    _check(["--allow-root", option, value, "true"])


# --- real runs ----------------------------------------------------------------------------------------------

REAL_OPTIONS = [o for o in OPTIONS if o not in ("--check", "--rootfs", "--allow-root")]
REAL_TOKEN = st.one_of(st.sampled_from(REAL_OPTIONS), st.sampled_from(ODD_OPTIONS[:-3]),
                       st.sampled_from([v for v in VALUES if v not in ("--rootfs", str(ROOTFS), "-h", "--")]))
REAL_PAIR = st.tuples(st.sampled_from(REAL_OPTIONS), st.sampled_from(VALUES[:60])).map(list)
REAL_ARGV = st.lists(st.one_of(REAL_PAIR, REAL_TOKEN.map(lambda t: [t])), max_size=5).map(
    lambda xs: [t for x in xs for t in x])


def _real(argv):
    full = [str(RUN), "--rootfs", str(ROOTFS), "--net", "none"] + argv + ["--", "/bin/sh", "-c", "exit 3"]
    r = subprocess.run([os.fsencode(a) for a in full], stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
                       env=user_env(), cwd="/tmp", **user_kwargs())
    err = r.stderr.decode(errors="replace")
    assert "Traceback" not in err, (argv, err)
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("run.py: error: ")]
    assert all(line.startswith("run.py: ") or not line.strip() for line in lines) or _echoes_input(argv, err), \
        (argv, err)
    assert len(errors) <= 1, (argv, err)
    assert r.returncode in (0, 3, 125, 126, 127), (argv, r.returncode, err)
    if r.returncode == 125:
        assert len(errors) == 1, (argv, err)
    return r.returncode


@settings(max_examples=40, deadline=None)
@given(REAL_ARGV)
def test_real_runs_exit_with_documented_codes(argv):
    _real(argv)


@pytest.mark.parametrize("argv", [
    ["--net", "bogus"], ["--hostname", "\udcff"], ["-v", "/tmp/\udcff:/mnt"], ["--memory", "9" * 5000],
    ["--cpus", "1e400"], ["-p", "99999:1"], ["-t"], ["-e", "A\nB=1"], ["--workdir", "relative"],
    ["--security-opt", "seccomp=/x.json"], ["--cap-add", "nope"], ["-w", "/\udcff"],
])
def test_real_runs_of_known_odd_arguments(argv):
    assert _real(argv) in (0, 3, 125)
