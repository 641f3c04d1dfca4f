"""runtime.cgroup.dbus / systemd: the D-Bus client that asks the user's systemd for a transient scope, against a
fake bus on a Unix socket (this machine has no systemd; the real one is exercised in the VM). The fake decodes
every message with its own, independent decoder of the D-Bus wire format."""
import os
import socket
import threading

import pytest

from runtime.cgroup import dbus, systemd
from runtime.errors import CgroupError


# ------------------------------------------------------------------ an independent decoder (test side)

def decode(sig, data, pos=0):
    """Decode values of signature `sig` from little-endian `data`; returns (values, pos)."""
    out = []
    i = 0
    while i < len(sig):
        one, i = _one(sig, i)
        v, pos = _value(one, data, pos)
        out.append(v)
    return out, pos


def _one(sig, i):
    c = sig[i]
    if c == "a":
        t, j = _one(sig, i + 1)
        return "a" + t, j
    if c == "(":
        depth, j = 0, i
        while True:
            depth += {"(": 1, ")": -1}.get(sig[j], 0)
            j += 1
            if depth == 0:
                return sig[i:j], j
    return c, i + 1


def _align(pos, n):
    return pos + (-pos % n)


def _value(t, data, pos):
    if t in "bu":
        pos = _align(pos, 4)
        v = int.from_bytes(data[pos:pos + 4], "little")
        return (bool(v) if t == "b" else v), pos + 4
    if t == "y":
        return data[pos], pos + 1
    if t in "so":
        pos = _align(pos, 4)
        n = int.from_bytes(data[pos:pos + 4], "little")
        assert data[pos + 4 + n] == 0
        return data[pos + 4:pos + 4 + n].decode(), pos + 5 + n
    if t == "g":
        n = data[pos]
        return data[pos + 1:pos + 1 + n].decode(), pos + 2 + n
    if t == "v":
        s, pos = _value("g", data, pos)
        (v,), pos = decode(s, data, pos)
        return (s, v), pos
    if t[0] == "(":
        pos = _align(pos, 8)
        return tuple(decode(t[1:-1], data, pos)[0]), decode(t[1:-1], data, pos)[1]
    if t[0] == "a":
        pos = _align(pos, 4)
        n = int.from_bytes(data[pos:pos + 4], "little")
        pos += 4
        elem = t[1:]
        pos = _align(pos, 8 if elem[0] in "(" else 4 if elem[0] in "aubso" else 1)
        end, items = pos + n, []
        while pos < end:
            v, pos = _value(elem, data, pos)
            items.append(v)
        assert pos == end
        return items, pos
    raise AssertionError(t)


def decode_message(msg):
    (_e, mtype, _f, _v, blen, serial, fields), pos = decode("yyyyuua(yv)", msg)
    fields = dict(fields)
    pos = _align(pos, 8)
    sig = fields.get(8, ("g", ""))[1]
    body, end = decode(sig, msg, pos)
    assert end == pos + blen == len(msg)
    return mtype, serial, {k: v[1] for k, v in fields.items()}, body


# ------------------------------------------------------------------ a fake user bus with a fake systemd

def build(mtype, serial, fields, sig, body):
    w = dbus.Writer()
    w.byte(ord("l")), w.byte(mtype), w.byte(1), w.byte(1)
    w.uint32(len(body))
    w.uint32(serial)
    fl = list(fields) + ([(8, "g", sig)] if sig else [])

    def f(x):
        w.align(8)
        w.byte(x[0])
        w.variant(x[1], x[2])
    w.array(8, fl, f)
    w.align(8)
    return bytes(w.buf) + body


def strings(*vals, sig=None):
    w = dbus.Writer()
    for s, v in zip(sig, vals):
        w.value(s, v)
    return bytes(w.buf)


class FakeBus(threading.Thread):
    """mode: 'ok' | 'signal-first' (JobRemoved before the reply) | 'error' | 'failed-job' | 'refuse-auth'"""

    def __init__(self, path, mode="ok"):
        super().__init__(daemon=True)
        self.mode = mode
        self.calls = []
        self.auth = None
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(1)

    def run(self):
        conn, _ = self.srv.accept()
        buf = b""
        while b"\r\n" not in buf:
            buf += conn.recv(4096)
        line, _, buf = buf.partition(b"\r\n")
        self.auth = line
        if self.mode == "refuse-auth":
            conn.sendall(b"REJECTED EXTERNAL\r\n")
            conn.close()
            return
        conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
        while b"\r\n" not in buf:
            buf += conn.recv(4096)
        begin, _, buf = buf.partition(b"\r\n")
        assert begin == b"BEGIN"
        serial = 100
        while True:
            msg, buf = dbus.split_message(buf)
            if msg is None:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                continue
            mtype, s, fields, body = decode_message(msg)
            self.calls.append((fields.get(3), fields.get(6), fields.get(1), fields.get(2), body))
            member = fields.get(3)
            serial += 1
            if member == "Hello":
                conn.sendall(build(2, serial, [(5, "u", s)], "s", strings(":1.42", sig="s")))
            elif member == "AddMatch":
                conn.sendall(build(2, serial, [(5, "u", s)], "", b""))
            elif member == "StartTransientUnit":
                job = "/org/freedesktop/systemd1/job/7"
                if self.mode == "error":
                    conn.sendall(build(3, serial, [(5, "u", s), (4, "s", "org.freedesktop.systemd1.UnitExists")],
                                       "s", strings(f"Unit {body[0]} already exists.", sig="s")))
                    continue
                reply = build(2, serial, [(5, "u", s)], "o", strings(job, sig="o"))
                result = "failed" if self.mode == "failed-job" else "done"
                other = build(4, serial + 1, [(1, "o", "/org/freedesktop/systemd1"), (2, "s", SYSTEMD_IF),
                                              (3, "s", "JobRemoved")], "uoss",
                              strings(6, "/org/freedesktop/systemd1/job/6", "x.scope", "done", sig="uoss"))
                signal = build(4, serial + 2, [(1, "o", "/org/freedesktop/systemd1"), (2, "s", SYSTEMD_IF),
                                               (3, "s", "JobRemoved")], "uoss",
                               strings(7, job, body[0], result, sig="uoss"))
                if self.mode == "signal-first":
                    conn.sendall(other + signal + reply)
                else:
                    conn.sendall(reply + other + signal)


SYSTEMD_IF = "org.freedesktop.systemd1.Manager"


@pytest.fixture
def bus(tmp_path):
    def start(mode="ok"):
        b = FakeBus(str(tmp_path / "bus"), mode)
        b.start()
        return b
    return start, str(tmp_path / "bus")


@pytest.mark.parametrize("mode", ["ok", "signal-first"])
def test_start_transient_scope(bus, mode):
    start, path = bus
    b = start(mode)
    dbus.start_transient_scope("pirun-1-2.scope", [4242], "pirun.slice", "pirun container", path=path)
    b.join(5)
    assert b.auth == b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode()
    members = [c[0] for c in b.calls]
    assert members == ["Hello", "AddMatch", "StartTransientUnit"]
    hello, match, stu = b.calls
    assert hello[1:4] == ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
    assert "member='JobRemoved'" in match[4][0] and "sender='org.freedesktop.systemd1'" in match[4][0]
    assert stu[1:4] == ("org.freedesktop.systemd1", "/org/freedesktop/systemd1", SYSTEMD_IF)
    name, mode_, props, aux = stu[4]
    assert (name, mode_, aux) == ("pirun-1-2.scope", "fail", [])
    assert dict(props) == {"Delegate": ("b", True), "PIDs": ("au", [4242]),
                           "CollectMode": ("s", "inactive-or-failed"), "Description": ("s", "pirun container"),
                           "Slice": ("s", "pirun.slice")}


def test_unit_error_is_reported(bus):
    start, path = bus
    start("error")
    with pytest.raises(CgroupError) as e:
        dbus.start_transient_scope("pirun-1-2.scope", [1], path=path)
    assert ("StartTransientUnit on the user's systemd failed: org.freedesktop.systemd1.UnitExists: "
            "Unit pirun-1-2.scope already exists.") in e.value.line()
    assert "dbus-user-session" in e.value.line()


def test_failed_job_is_reported(bus):
    start, path = bus
    start("failed-job")
    with pytest.raises(CgroupError, match="ended with result 'failed'"):
        dbus.start_transient_scope("pirun-1-2.scope", [1], path=path)


def test_refused_auth(bus):
    start, path = bus
    start("refuse-auth")
    with pytest.raises(CgroupError, match="authentication refused: REJECTED EXTERNAL"):
        dbus.start_transient_scope("pirun-1-2.scope", [1], path=path)


def test_no_bus(tmp_path):
    with pytest.raises(CgroupError) as e:
        dbus.start_transient_scope("pirun-1-2.scope", [1], path=str(tmp_path / "nobus"))
    assert f"cannot reach the user's systemd over D-Bus at {tmp_path}/nobus: No such file or directory" \
        in e.value.line()
    assert "enable-linger" in e.value.line()


def test_bus_path(monkeypatch, tmp_path):
    mine = tmp_path / "b,us"
    mine.write_text("")
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={str(mine).replace(',', '%2c')},guid=abc")
    assert dbus.bus_path() == str(mine)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
    (tmp_path / "bus").write_text("")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert dbus.bus_path() == f"{tmp_path}/bus"              # the first candidate that exists and is ours
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    run = f"/run/user/{os.getuid()}/bus"
    assert dbus.bus_path() == (run if os.path.exists(run) else "/nonexistent/bus")
    monkeypatch.delenv("DBUS_SESSION_BUS_ADDRESS")
    assert dbus.bus_path() == run


def test_writer_matches_independent_decoder():
    w = dbus.Writer()
    w.byte(7)
    dbus.properties(w, [("A", ("s", "x")), ("B", ("au", [1, 2, 3])), ("C", ("b", False)), ("D", ("as", []))])
    w.array(8, [], None)
    (y, props, empty), end = decode("ya(sv)a(sa(sv))", bytes(w.buf))
    assert y == 7 and empty == [] and end == len(w.buf)
    assert props == [("A", ("s", "x")), ("B", ("au", [1, 2, 3])), ("C", ("b", False)), ("D", ("as", []))]


def test_message_roundtrip():
    body = strings("u1.scope", "fail", sig="ss")
    msg = dbus.message(3, "org.freedesktop.systemd1", "/org/freedesktop/systemd1", SYSTEMD_IF, "M", "ss", body)
    mtype, serial, fields, vals = dbus.parse(msg)
    assert (mtype, serial, vals) == (1, 3, ["u1.scope", "fail"])
    assert fields[3] == "M" and fields[8] == "ss" and fields[6] == "org.freedesktop.systemd1"
    assert decode_message(msg)[3] == ["u1.scope", "fail"]
    assert dbus.split_message(msg[:-1]) == (None, msg[:-1])
    assert dbus.split_message(msg + b"x") == (msg, b"x")


def test_start_scope_checks_where_run_py_landed(monkeypatch):
    calls = []
    monkeypatch.setattr(dbus, "start_transient_scope", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(systemd, "own_cgroup", lambda pid="self": "/user.slice/u/user@1.service/app.slice/u1.scope")
    scope = systemd.start_scope("u1.scope", "app.slice")
    assert scope.cgroup.endswith("/u1.scope") and scope.holder_pid == os.getpid()
    assert calls[0][0] == ("u1.scope", [os.getpid()], "app.slice")
    monkeypatch.setattr(systemd, "own_cgroup", lambda pid="self": "/user.slice/u/session-3.scope")
    with pytest.raises(CgroupError, match="not in the new scope"):
        systemd.start_scope("u1.scope")
