"""The image store under --root: plain records and directories, changed only by rename, flock'ed.

    ROOT/store.lock            shared by every command adding to the store, exclusive for removing debris
    ROOT/images.json           the image records (one JSON document), rewritten via temp + fsync + rename
    ROOT/images.lock           held around each read-modify-write of images.json
    ROOT/layers/<hex>/diff     a layer unpacked once, keyed by its diff ID, shared by every image that has it
    ROOT/layers/<hex>/size     its uncompressed size
    ROOT/layers/.tmp-*         a layer being unpacked (debris once no one holds store.lock)
    ROOT/tmp/                  transport scratch (a pull's download): debris likewise
    ROOT/containers/<ID>/      containers' writable layers (runtime.image.container)

An image record is written only after all of its layers are complete, so a pull or load killed at any point
leaves at most debris: whole layers no image names (reused by the next pull, removed by `image prune`) and
temporary directories (removed by the next command that gets the store lock). A record whose layer directory
is missing is debris too, never an error: the image is not listed.
"""
import errno
import fcntl
import marshal
import os
import sys
import time

from runtime.errors import SpecError

IMAGES = "images.json"


class StoreError(SpecError):
    """Unknown image, image in use, store not usable."""


class Store:
    def __init__(self, root, runroot=None):
        self.root = root
        self.runroot = runroot
        self.layers = f"{root}/layers"
        self.tmp = f"{root}/tmp"
        self.containers = f"{root}/containers"
        self._lock_fd = None

    # --- locking ---------------------------------------------------------------------------------------
    def open(self):
        try:
            for d in (self.root, self.layers, self.tmp, self.containers):
                if not os.path.isdir(d):
                    os.makedirs(d, 0o700, exist_ok=True)
        except OSError as e:
            raise StoreError(f"image store {self.root}: {e.strerror}",
                             fix="choose a writable directory with --root") from None
        return self

    def _open_lock(self, name):
        return os.open(f"{self.root}/{name}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def shared(self):
        """Hold store.lock shared (adding to the store); returns the fd to close."""
        fd = self._open_lock("store.lock")
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def exclusive(self, wait=True):
        fd = self._open_lock("store.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    # --- records ---------------------------------------------------------------------------------------
    def read_images(self):
        """The records of images.json; through a marshal cache of it (derived, keyed by the file's inode,
        size and mtime): `pirun run` then needs no json module (json imports re: ~10 ms)."""
        path = f"{self.root}/{IMAGES}"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return []
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cache = self._cache_path()
        try:
            with open(cache, "rb") as f:
                cached_key, images = marshal.loads(f.read())
            if tuple(cached_key) == key:
                return images
        except (OSError, ValueError, EOFError, TypeError):
            pass
        with open(path, "rb") as f:
            data = f.read()
        import json
        try:
            images = json.loads(data).get("images", [])
        except ValueError:
            raise StoreError(f"{path} is not valid JSON",
                             fix=f"move it away; the layers stay in {self.layers}") from None
        self._write_cache(key, images)
        return images

    def _cache_path(self):
        return f"{self.root}/images.cache-{sys.implementation.cache_tag}"

    def _write_cache(self, key, images):
        cache = self._cache_path()
        tmp = f"{cache}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                f.write(marshal.dumps((key, images)))
            os.rename(tmp, cache)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def images(self):
        """The usable image records: those whose layers are all present."""
        out = []
        for rec in self.read_images():
            if all(os.path.isdir(self.layer_dir(d)) for d in rec["layers"]):
                out.append(rec)
        return out

    def _write_images(self, images):
        import json
        path = f"{self.root}/{IMAGES}"
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"images": images}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
        dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        st = os.stat(path)
        self._write_cache((st.st_ino, st.st_size, st.st_mtime_ns), images)

    def modify(self, fn):
        """Read-modify-write images.json under images.lock: fn(list) -> result (list changed in place)."""
        fd = self._open_lock("images.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            images = self.read_images()
            result = fn(images)
            self._write_images(images)
            return result
        finally:
            os.close(fd)

    def add_image(self, record, names):
        """Add (or merge names into) an image record; a name moves from any other image to this one."""
        def change(images):
            for other in images:
                if other["id"] != record["id"]:
                    other["names"] = [n for n in other["names"] if n not in names]
            for rec in images:
                if rec["id"] == record["id"]:
                    rec["names"] += [n for n in names if n not in rec["names"]]
                    rec["layers"] = record["layers"]
                    return rec
            record["names"] = list(names)
            images.append(record)
            return record
        return self.modify(change)

    def layer_dir(self, diff_id):
        return f"{self.layers}/{diff_id.split(':', 1)[1]}"

    def has_layer(self, diff_id):
        return os.path.isdir(self.layer_dir(diff_id))

    def layer_size(self, diff_id):
        try:
            with open(f"{self.layer_dir(diff_id)}/size") as f:
                return int(f.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    # --- lookup ----------------------------------------------------------------------------------------
    def lookup(self, text, images=None):
        """The image record a user's reference names (full or short name, ID or ID prefix), or None."""
        images = self.images() if images is None else images
        from runtime.image import ref
        bare = text[7:] if text.startswith("sha256:") else text
        if ref.is_id_prefix(text):
            hits = [r for r in images if r["id"].startswith(bare)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise StoreError(f"image ID {text} is ambiguous ({len(hits)} images)", fix="give more digits")
        try:
            wanted = [str(ref.parse(text)), str(ref.parse(text, ref.LOCAL_DOMAIN))]
        except SpecError:
            return None
        for r in images:
            if any(n in wanted for n in r["names"]):
                return r
        # a short name: "busybox:1" matches "<any registry>/busybox:1" when only one image does
        short = text if ":" in text.rpartition("/")[2] else f"{text}:latest"
        hits = [r for r in images if any(n.endswith("/" + short) for n in r["names"])]
        return hits[0] if len(hits) == 1 else None

    # --- containers' use and debris --------------------------------------------------------------------
    def container_ids(self):
        try:
            return [n for n in os.listdir(self.containers) if len(n) == 64]
        except FileNotFoundError:
            return []

    def container_alive(self, cid):
        """A writable layer is in use while its lock is held (a launcher or monitor lives) or a container
        state record under --runroot names it."""
        if self.runroot and os.path.exists(f"{self.runroot}/containers/{cid}"):
            return True
        try:
            fd = os.open(f"{self.containers}/{cid}/lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def container_record(self, cid):
        import json
        try:
            with open(f"{self.containers}/{cid}/container.json") as f:
                return json.load(f)
        except (OSError, ValueError):
            return None


    def users_of(self, image_id):
        """IDs of live containers using an image."""
        out = []
        for cid in self.container_ids():
            rec = self.container_record(cid)
            if rec and rec.get("image") == image_id and self.container_alive(cid):
                out.append(cid)
        return out

    def debris(self, layers=False):
        """Paths to remove (with store.lock held exclusively): temporary directories, writable layers of
        dead containers, lock files; with layers=True also layers no image record uses."""
        paths = []
        for name in _listdir(self.tmp):
            paths.append(f"{self.tmp}/{name}")
        for name in _listdir(self.layers):
            if name.startswith(".tmp-"):
                paths.append(f"{self.layers}/{name}")
        for cid in self.container_ids():
            if not self.container_alive(cid):
                paths.append(f"{self.containers}/{cid}")
        if layers:
            used = set()
            for rec in self.read_images():
                used.update(d.split(":", 1)[1] for d in rec["layers"])
            for name in _listdir(self.layers):
                if len(name) == 64 and name not in used:
                    paths.append(f"{self.layers}/{name}")
        return paths

    def remove(self, paths):
        """rm -rf in a user namespace (the files belong to subordinate IDs)."""
        if not paths:
            return
        from runtime.image import unpack, userns
        userns.run(unpack.remove_paths, paths)
        for name in _listdir(self.layers):
            if name.endswith(".lock"):
                try:
                    os.unlink(f"{self.layers}/{name}")
                except OSError:
                    pass

    def clean(self, wait=False, layers=False):
        """Remove debris if no other command is adding to the store (wait=False: skip then). Returns the
        number of paths removed."""
        fd = self.exclusive(wait=wait)
        if fd is None:
            return 0
        try:
            paths = self.debris(layers=layers)
            self.remove(paths)
            return len(paths)
        finally:
            os.close(fd)

    def tmpdir(self):
        """A scratch directory under ROOT/tmp (call with store.lock shared held)."""
        path = f"{self.tmp}/{os.getpid()}-{os.urandom(6).hex()}"
        os.mkdir(path, 0o700)
        return path


def _listdir(path):
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def is_enospc(e):
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


def json_record(fields):
    """A flat JSON object of str/None/int values, written without the json module (the run path)."""
    def value(v):
        if v is None:
            return "null"
        if isinstance(v, int):
            return str(v)
        out = ['"']
        for c in str(v):
            if c in '"\\':
                out.append("\\" + c)
            elif c < " " or c == "\x7f":
                out.append(f"\\u{ord(c):04x}")
            else:
                out.append(c)
        out.append('"')
        return "".join(out)
    return "{" + ", ".join(f"{value(k)}: {value(v)}" for k, v in fields.items()) + "}\n"
