"""A minimal D-Bus client for the user's systemd manager: just enough for StartTransientUnit and its job.

Why not `systemd-run`/`busctl`: each is a process start plus its own bus connection on the start-up path of
every container (measured in the TCG VM: ~220 ms and ~180 ms, against a few ms for this); podman and runc
talk to systemd over D-Bus directly too (go-systemd). Only `_socket` (the C module; `socket` costs ~8 ms to
import) and plain bytes: the wire format is little code for the few types used here.

Protocol (D-Bus specification): `\\0AUTH EXTERNAL <hex uid>` -> `OK <guid>` -> `BEGIN`; then messages with a
16-byte fixed header, an array of (code, variant) header fields padded to 8, then the body. Types used:
y b u s o g, arrays (`au`, `a(sv)`, `a(sa(sv))`), structs, variants.
"""
import os

from runtime.errors import CgroupError

SYSTEMD = ("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
BUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
F_PATH, F_INTERFACE, F_MEMBER, F_ERROR_NAME, F_REPLY_SERIAL, F_DESTINATION, F_SENDER, F_SIGNATURE = range(1, 9)
TIMEOUT = 60.0      # seconds; the first scope on a cold, emulated VM can take a while


class DBusError(CgroupError):
    """The bus refused, broke or could not express a request. A CgroupError: wherever it surfaces, run.py
    prints it as one line with the fix and exits 125."""

    def __init__(self, message, fix=None):
        super().__init__(message, fix or FIX)


# -------------------------------------------------------------------------------------------- marshalling

class Writer:
    def __init__(self):
        self.buf = bytearray()

    def align(self, n):
        self.buf += b"\0" * (-len(self.buf) % n)

    def byte(self, v):
        self.buf.append(v)

    def uint32(self, v):
        self.align(4)
        self.buf += v.to_bytes(4, "little")

    def boolean(self, v):
        self.uint32(1 if v else 0)

    def string(self, v):
        data = v.encode()
        self.uint32(len(data))
        self.buf += data + b"\0"

    def signature(self, v):
        data = v.encode()
        self.byte(len(data))
        self.buf += data + b"\0"

    def array(self, elem_align, items, write_item):
        self.uint32(0)
        at = len(self.buf) - 4
        self.align(elem_align)          # padding to the first element is not counted in the length
        start = len(self.buf)
        for item in items:
            write_item(item)
        self.buf[at:at + 4] = (len(self.buf) - start).to_bytes(4, "little")

    def variant(self, sig, value):
        self.signature(sig)
        self.value(sig, value)

    def value(self, sig, value):
        """Values of the signatures used here: y b u s o g, au, as."""
        if sig == "y":
            self.byte(value)
        elif sig == "b":
            self.boolean(value)
        elif sig == "u":
            self.uint32(value)
        elif sig in ("s", "o"):
            self.string(value)
        elif sig == "g":
            self.signature(value)
        elif sig in ("au", "as"):
            self.array(4, value, lambda v: self.value(sig[1], v))
        else:
            raise ValueError(f"unsupported D-Bus type {sig!r}")


def properties(w, props):
    """a(sv): [(name, (signature, value)), ...]"""
    def item(p):
        w.align(8)
        w.string(p[0])
        w.variant(*p[1])
    w.array(8, props, item)


def message(serial, dest, path, iface, member, sig="", body=b""):
    w = Writer()
    w.byte(ord("l"))
    w.byte(METHOD_CALL)
    w.byte(0)
    w.byte(1)
    w.uint32(len(body))
    w.uint32(serial)
    fields = [(F_PATH, "o", path), (F_INTERFACE, "s", iface), (F_MEMBER, "s", member), (F_DESTINATION, "s", dest)]
    if sig:
        fields.append((F_SIGNATURE, "g", sig))

    def field(f):
        w.align(8)
        w.byte(f[0])
        w.variant(f[1], f[2])
    w.array(8, fields, field)
    w.align(8)
    return bytes(w.buf) + body


class Reader:
    def __init__(self, data, order="little", pos=0):
        self.data, self.order, self.pos = data, order, pos

    def align(self, n):
        self.pos += -self.pos % n

    def byte(self):
        self.pos += 1
        return self.data[self.pos - 1]

    def uint32(self):
        self.align(4)
        self.pos += 4
        return int.from_bytes(self.data[self.pos - 4:self.pos], self.order)

    def string(self):
        n = self.uint32()
        self.pos += n + 1
        return self.data[self.pos - n - 1:self.pos - 1].decode(errors="replace")

    def signature(self):
        n = self.byte()
        self.pos += n + 1
        return self.data[self.pos - n - 1:self.pos - 1].decode()

    def value(self, sig):
        if sig == "y":
            return self.byte()
        if sig in ("u", "b"):
            return self.uint32()
        if sig in ("s", "o"):
            return self.string()
        if sig == "g":
            return self.signature()
        raise DBusError(f"unsupported type {sig!r} in a reply")

    def values(self, sig):
        return [self.value(c) for c in sig]


def split_message(buf):
    """(message, rest) when buf holds a whole message, else (None, buf)."""
    if len(buf) < 16:
        return None, buf
    order = "little" if buf[0] == ord("l") else "big"
    body_len = int.from_bytes(buf[4:8], order)
    fields_len = int.from_bytes(buf[12:16], order)
    total = 16 + fields_len + (-fields_len % 8) + body_len
    if len(buf) < total:
        return None, buf
    return bytes(buf[:total]), buf[total:]


def parse(msg):
    """(type, serial, {field code: value}, body values) of a message with a simple body signature."""
    order = "little" if msg[0] == ord("l") else "big"
    r = Reader(msg, order)
    r.pos = 1
    mtype = r.byte()
    r.pos = 4
    body_len = r.uint32()
    serial = r.uint32()
    fields_len = r.uint32()
    end = 16 + fields_len
    fields = {}
    while r.pos < end:
        r.align(8)
        code = r.byte()
        fields[code] = r.value(r.signature())
    r.pos = end
    r.align(8)
    sig = fields.get(F_SIGNATURE, "")
    body = []
    if sig and all(c in "ybusog" for c in sig):
        body = Reader(msg[r.pos:r.pos + body_len], order).values(sig)
    return mtype, serial, fields, body


# ------------------------------------------------------------------------------------------- connection

def bus_path():
    """The user's bus socket: from DBUS_SESSION_BUS_ADDRESS (unix:path=...), $XDG_RUNTIME_DIR/bus or
    /run/user/UID/bus, the first that exists and belongs to this user (after `su`/`runuser` the environment
    may still name root's bus); else the first candidate, for the error message."""
    uid = os.getuid()
    candidates = []
    for part in os.environ.get("DBUS_SESSION_BUS_ADDRESS", "").split(";"):
        if part.startswith("unix:"):
            for kv in part[5:].split(","):
                if kv.startswith("path="):
                    candidates.append(_unescape(kv[5:]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(os.environ["XDG_RUNTIME_DIR"] + "/bus")
    candidates.append(f"/run/user/{uid}/bus")
    for path in candidates:
        try:
            if os.stat(path).st_uid == uid:
                return path
        except OSError:
            pass
    return candidates[0]


def _unescape(text):
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "%" and i + 3 <= len(text):
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode()


class Connection:
    def __init__(self, path, timeout=TIMEOUT):
        import _socket
        self.path = path
        self.serial = 0
        self.buf = b""
        self.pending = []           # messages read while waiting for something else
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            self.sock.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
            line = self._line()
            if not line.startswith(b"OK "):
                raise DBusError(f"authentication refused: {line.decode(errors='replace').strip()}")
            self.sock.sendall(b"BEGIN\r\n")
        except BaseException:
            self.sock.close()
            raise

    def close(self):
        self.sock.close()

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise DBusError("the bus closed the connection during authentication")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def send(self, dest, path, iface, member, sig="", body=b""):
        self.serial += 1
        self.sock.sendall(message(self.serial, dest, path, iface, member, sig, body))
        return self.serial

    def _next(self):
        while True:
            msg, self.buf = split_message(self.buf)
            if msg is not None:
                return parse(msg)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise DBusError("the bus closed the connection")
            self.buf += chunk

    def reply(self, serial):
        """The body of the reply to `serial`; a D-Bus error becomes DBusError("Name: message")."""
        for i, m in enumerate(self.pending):
            if m[0] in (METHOD_RETURN, ERROR) and m[2].get(F_REPLY_SERIAL) == serial:
                del self.pending[i]
                return self._result(m)
        while True:
            m = self._next()
            if m[0] in (METHOD_RETURN, ERROR) and m[2].get(F_REPLY_SERIAL) == serial:
                return self._result(m)
            self.pending.append(m)

    @staticmethod
    def _result(m):
        if m[0] == ERROR:
            text = m[3][0] if m[3] else ""
            raise DBusError(f"{m[2].get(F_ERROR_NAME, 'error')}: {text}".rstrip(": "))
        return m[3]

    def signal(self, member, match):
        """Wait for a signal `member` whose body satisfies match(body); returns the body."""
        for i, m in enumerate(self.pending):
            if m[0] == SIGNAL and m[2].get(F_MEMBER) == member and match(m[3]):
                del self.pending[i]
                return m[3]
        while True:
            m = self._next()
            if m[0] == SIGNAL and m[2].get(F_MEMBER) == member and match(m[3]):
                return m[3]
            self.pending.append(m)


# ------------------------------------------------------------------------------------------- systemd

def start_transient_scope(unit, pids, slice_=None, description=None, path=None):
    """StartTransientUnit(unit, "fail", Delegate=yes, PIDs=pids, ...) on the user manager; returns when the
    job is done (the processes are in the scope). Raises CgroupError with the bus's own words."""
    path = path or bus_path()
    props = [("Delegate", ("b", True)), ("PIDs", ("au", list(pids))),
             ("CollectMode", ("s", "inactive-or-failed")),
             ("Description", ("s", description or f"pirun container {unit}"))]
    if slice_:
        props.append(("Slice", ("s", slice_)))
    w = Writer()
    w.string(unit)
    w.string("fail")
    properties(w, props)
    w.array(8, [], None)                 # no auxiliary units
    body = bytes(w.buf)
    try:
        conn = Connection(path)
    except OSError as e:
        raise CgroupError(f"cgroup scope {unit}: cannot reach the user's systemd over D-Bus at {path}: "
                          f"{e.strerror or e}", FIX) from None
    except DBusError as e:
        raise CgroupError(f"cgroup scope {unit}: D-Bus at {path}: {e}", FIX) from None
    try:
        hello = conn.send(*BUS, "Hello")
        match = conn.send(*BUS, "AddMatch", "s", _string_body(
            "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.systemd1.Manager',"
            "member='JobRemoved'"))
        start = conn.send(*SYSTEMD, "StartTransientUnit", "ssa(sv)a(sa(sv))", body)
        conn.reply(hello)
        conn.reply(match)
        job = conn.reply(start)[0]
        _id, _job, _unit, result = conn.signal("JobRemoved", lambda b: len(b) == 4 and b[1] == job)
        if result != "done":
            raise DBusError(f"the job starting {unit} ended with result {result!r}")
    except (OSError, DBusError) as e:
        text = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise CgroupError(f"cgroup scope {unit}: StartTransientUnit on the user's systemd failed: {text}",
                          FIX) from None
    finally:
        conn.close()


def _string_body(s):
    w = Writer()
    w.string(s)
    return bytes(w.buf)


FIX = ("run run.py in a login session of this user (ssh, or machinectl shell USER@) so that the user's systemd "
       "and D-Bus run (package dbus-user-session); `loginctl enable-linger USER` keeps them running")
