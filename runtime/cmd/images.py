"""Image subcommands: pull, load, import, images, rmi, image prune, image inspect, system df.

Argument handling and output only; the work is in runtime.image (store, transports, unpack).
"""
import os
import sys

from runtime.errors import SpecError


def _args(argv, cmd, flags, valued, positional=(0, 1)):
    """Small parser: flags (no value), valued options (--opt V or --opt=V); returns (opts, positionals)."""
    opts, pos = {}, []
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            pos += argv[i:]
            break
        if a.startswith("-") and a != "-":
            name, eq, value = a.partition("=")
            if name in ("-h", "--help"):
                opts["help"] = True
            elif name in flags:
                key = flags[name]
                if eq:
                    if value not in ("true", "false"):
                        raise SpecError(f"{cmd}: {name}={value}: expected true or false")
                    opts[key] = value == "true"
                else:
                    opts[key] = True
            elif name in valued:
                if not eq:
                    if i >= len(argv):
                        raise SpecError(f"{cmd}: option {name} needs a value", fix=f"see pirun {cmd} --help")
                    value = argv[i]
                    i += 1
                if "\0" in value:
                    raise SpecError(f"{cmd}: {name}: value contains a NUL byte")
                opts[valued[name]] = value
            else:
                raise SpecError(f"{cmd}: unknown option {name}", fix=f"see pirun {cmd} --help")
        else:
            pos.append(a)
    lo, hi = positional
    if "help" not in opts and not lo <= len(pos) <= (hi if hi is not None else len(pos)):
        raise SpecError(f"{cmd}: expected {'at least ' if hi is None else ''}{lo}"
                        f"{'' if hi in (lo, None) else f' to {hi}'} argument(s), got {len(pos)}",
                        fix=f"see pirun {cmd} --help")
    return opts, pos


def _out(text):
    sys.stdout.write(text)
    sys.stdout.flush()


def _store(ctx, clean=True):
    from runtime.image.store import Store
    store = Store(ctx.root, ctx.runroot).open()
    if clean:
        store.clean(wait=False)
    return store


# --- pull -------------------------------------------------------------------------------------------------
PULL_HELP = """usage: pirun pull [OPTIONS] REFERENCE

Pull an image from a registry (through skopeo: registries.conf, auth files and certs.d as podman reads them).
  --platform OS/ARCH[/VARIANT]  the image for this platform (default: this host's)
  --tls-verify=false            plain HTTP or an untrusted certificate
  --creds USER:PASSWORD         credentials for the registry
  --authfile FILE               an auth.json (default: podman's)
  --cert-dir DIR                CA certificates (ca.crt) for the registry
  -q, --quiet                   print only the image ID
"""


def pull_image(ctx, text, platform_text=None, warn=None, pull_opts=None):
    """Pull `text` into the store; returns the image record."""
    import shutil
    from runtime.image import ref, transport
    from runtime.image.transport import docker
    platform = ref.parse_platform(platform_text) if platform_text else ref.host_platform()
    if text.startswith("docker://"):
        text = text[len("docker://"):]
    ref.parse(text)                                  # a bad reference fails before skopeo starts
    store = _store(ctx)
    from runtime.image.store import _listdir
    before = set(_listdir(store.layers))
    lock = store.shared()
    committed = False
    try:
        scratch = store.tmpdir()
        try:
            source, unpacked = docker.pull(text, ctx, platform, pull_opts or docker.PullOptions(), scratch)
            images = source.images(platform)
            devices = sum(v[2] for v in unpacked.values())
            if devices:
                (warn or ctx.warn)(f"{devices} device node(s) in the image were skipped: device nodes cannot "
                                   f"be created rootless")
            rec = transport.commit(ctx, images[0], warn=warn or ctx.warn)
            committed = True
            return rec
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        os.close(lock)
        if not committed:
            new = [n for n in set(_listdir(store.layers)) - before if len(n) == 64]
            if new:
                _forget_layers(store, ["sha256:" + n for n in new])


def _forget_layers(store, diff_ids):
    """A failed pull removes the layers it unpacked, unless another command is adding to the store (then
    they stay as debris for image prune) or an image uses them."""
    fd = store.exclusive(wait=False)
    if fd is None:
        return
    try:
        used = {d for r in store.read_images() for d in r["layers"]}
        store.remove([store.layer_dir(d) for d in diff_ids if d not in used])
    finally:
        os.close(fd)


def pull(argv, ctx):
    opts, pos = _args(argv, "pull", {"-q": "quiet", "--quiet": "quiet", "--tls-verify": "tls_verify"},
                      {"--platform": "platform", "--creds": "creds", "--authfile": "authfile",
                       "--cert-dir": "cert_dir", "--arch": "arch", "--os": "os", "--variant": "variant"},
                      (1, 1))
    if "help" in opts:
        _out(PULL_HELP)
        return 0
    from runtime.image.transport.docker import PullOptions
    platform = opts.get("platform")
    if platform is None and ("arch" in opts or "os" in opts):
        from runtime.image import ref
        host = ref.host_platform()
        platform = f"{opts.get('os', host.os)}/{opts.get('arch', host.arch)}" + \
                   (f"/{opts['variant']}" if opts.get("variant") else "")
    po = PullOptions(tls_verify=opts.get("tls_verify"), creds=opts.get("creds"), authfile=opts.get("authfile"),
                     cert_dir=opts.get("cert_dir"))
    rec = pull_image(ctx, pos[0], platform, ctx.warn, po)
    _out(rec["id"] + "\n")
    return 0


# --- load / import ----------------------------------------------------------------------------------------
LOAD_HELP = """usage: pirun load [-i FILE] [-q]

Load images from a docker-archive (docker save, podman save), an oci-archive or an OCI layout directory
(also as oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE); standard input when -i is not given.
  --platform OS/ARCH[/VARIANT]  from a multi-platform OCI index, the image for this platform
"""


def load(argv, ctx):
    opts, _pos = _args(argv, "load", {"-q": "quiet", "--quiet": "quiet"},
                       {"-i": "input", "--input": "input", "--platform": "platform"}, (0, 0))
    if "help" in opts:
        _out(LOAD_HELP)
        return 0
    from runtime.image import ref, transport
    platform = ref.parse_platform(opts["platform"]) if opts.get("platform") else ref.host_platform()
    store = _store(ctx)
    lock = store.shared()
    scratch = None
    try:
        src = opts.get("input")
        if src is None or src == "-":
            if os.isatty(0):
                raise SpecError("load: no input: give -i FILE or an archive on standard input")
            scratch = store.tmpdir()
            src = f"{scratch}/stdin.tar"
            import shutil
            with open(src, "wb") as f:
                shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
        source = transport.open_source(src, ctx)
        names = []
        for image in source.images(platform):
            rec = transport.commit(ctx, image, warn=ctx.warn)
            names += image.names or ["sha256:" + rec["id"]]
    finally:
        if scratch is not None:
            import shutil
            shutil.rmtree(scratch, ignore_errors=True)
        os.close(lock)
    _out(f"Loaded image{'s' if len(names) > 1 else ''}: {', '.join(names)}\n")
    return 0


IMPORT_HELP = """usage: pirun import [OPTIONS] TARBALL [REFERENCE]

Create an image of one layer from a root filesystem tarball (podman import); an image archive or layout
(docker-archive, oci-archive, OCI layout directory) is loaded as by pirun load.
  -c, --change 'CMD ["..."]' | 'ENV K=V' | 'WORKDIR /d' | 'USER u' | 'ENTRYPOINT [...]'   set config fields
"""


def import_(argv, ctx):
    opts, pos = _args(argv, "import", {"-q": "quiet", "--quiet": "quiet"},
                      {"-c": "change", "--change": "change", "--platform": "platform"}, (1, 2))
    if "help" in opts:
        _out(IMPORT_HELP)
        return 0
    path = pos[0]
    from runtime.image import transport
    try:
        source = transport.open_source(path, ctx)
    except transport.TransportError as e:
        if "is not an image" not in e.message or os.path.isdir(path) or "not a tar archive" in e.message:
            raise
        source = None
    if source is not None:
        from runtime.image import ref
        plat = ref.parse_platform(opts["platform"]) if opts.get("platform") else ref.host_platform()
        names = []
        for image in source.images(plat):
            if len(pos) > 1:
                image.names = [str(ref.parse(pos[1], ref.LOCAL_DOMAIN))]
            rec = transport.commit(ctx, image, warn=ctx.warn)
            names.append(rec["id"])
        _out("".join(f"sha256:{n}\n" for n in names))
        return 0
    rec = import_rootfs(ctx, path, pos[1] if len(pos) > 1 else None, opts.get("change"))
    _out(f"sha256:{rec['id']}\n")
    return 0


def import_rootfs(ctx, path, name, change=None):
    import json
    import pwd
    from runtime.image import ref, store as store_mod, transport, unpack, userns
    if not os.path.isfile(path):
        raise SpecError(f"import {path}: no such file")
    names = [str(ref.parse(name, ref.LOCAL_DOMAIN))] if name else []
    store = _store(ctx)
    lock = store.shared()
    try:
        try:
            user = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            user = str(os.getuid())
        out = userns.run(unpack.unpack_all, store.layers, [((os.path.abspath(path), 0, -1), None, None)], user)
        diff_id, _size, devices = out.split()
        if int(devices):
            ctx.warn(f"{devices} device node(s) in the tarball were skipped: device nodes cannot be created "
                     f"rootless")
        host = ref.host_platform()
        cfg = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}
        if change:
            key, _, value = change.partition(" ")
            key = key.upper()
            fields = {"CMD": "Cmd", "ENTRYPOINT": "Entrypoint", "WORKDIR": "WorkingDir", "USER": "User",
                      "ENV": "Env", "STOPSIGNAL": "StopSignal"}
            if key not in fields:
                raise SpecError(f"import --change {change!r}: unsupported instruction",
                                fix="CMD, ENTRYPOINT, ENV, WORKDIR, USER or STOPSIGNAL")
            if key in ("CMD", "ENTRYPOINT"):
                try:
                    value = json.loads(value) if value.startswith("[") else ["/bin/sh", "-c", value]
                except ValueError:
                    raise SpecError(f"import --change {change!r}: bad JSON array") from None
            elif key == "ENV":
                value = cfg["Env"] + [value]
            cfg[fields[key]] = value
        config = {"created": store_mod.now(), "architecture": host.arch, "os": host.os, "config": cfg,
                  "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                  "history": [{"created": store_mod.now(), "created_by": f"pirun import {os.path.basename(path)}"}]}
        if host.variant:
            config["variant"] = host.variant
        data = json.dumps(config, sort_keys=True).encode()
        image = transport.Image(names, "", data, transport.sha256(data), [((path, 0, -1), None)])
        return transport.commit(ctx, image, warn=ctx.warn)
    finally:
        os.close(lock)


# --- images / inspect / rmi / prune / df -----------------------------------------------------------------
def _split_name(name):
    repo, _, tag = name.rpartition(":")
    if "/" in tag or not repo:
        return name, "<none>"
    return repo, tag


def human_size(n):
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{n}B"
        n /= 1000
    return f"{n}B"


def _ago(stamp):
    import calendar
    import time
    try:
        t = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, TypeError):
        return "unknown"
    d = max(0, int(time.time() - t))
    for size, unit in ((86400 * 365, "year"), (86400 * 7, "week"), (86400, "day"), (3600, "hour"), (60, "minute")):
        if d >= size:
            n = d // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a minute ago" if d >= 2 else "Now"


def images(argv, ctx):
    opts, _ = _args(argv, "images", {"-q": "quiet", "--quiet": "quiet", "-a": "all", "--all": "all",
                                     "--no-trunc": "no_trunc", "--digests": "digests"}, {}, (0, 1))
    if "help" in opts:
        _out("usage: pirun images [-q] [--no-trunc]\n\nList the images in the store.\n")
        return 0
    store = _store(ctx)
    rows = []
    for rec in sorted(store.images(), key=lambda r: r.get("stored", ""), reverse=True):
        iid = rec["id"] if opts.get("no_trunc") else rec["id"][:12]
        for name in rec["names"] or ["<none>:<none>"]:
            repo, tag = _split_name(name) if name != "<none>:<none>" else ("<none>", "<none>")
            rows.append((repo, tag, iid, _ago(rec.get("created")), human_size(rec.get("size", 0))))
    if opts.get("quiet"):
        seen = []
        for r in rows:
            if r[2] not in seen:
                seen.append(r[2])
        _out("".join(f"{i}\n" for i in seen))
        return 0
    head = ("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    _out("".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in [head] + rows))
    return 0


def _find(store, text, images=None):
    from runtime.image.store import StoreError
    rec = store.lookup(text, images)
    if rec is None:
        raise StoreError(f"image {text} is not in the store", fix="pirun images lists the images")
    return rec


def inspect(argv, ctx):
    opts, pos = _args(argv, "image inspect", {}, {"--format": "format", "-f": "format"}, (1, None))
    if "help" in opts:
        _out("usage: pirun image inspect IMAGE...\n")
        return 0
    import json
    store = _store(ctx, clean=False)
    out = []
    for text in pos:
        rec = _find(store, text)
        cfg = rec["config"]
        out.append({"Id": rec["id"], "Digest": rec.get("digest") or "", "RepoTags": rec["names"],
                    "Created": rec.get("created"), "Architecture": cfg.get("architecture"), "Os": cfg.get("os"),
                    "Variant": cfg.get("variant", ""), "Config": cfg.get("config") or {},
                    "RootFS": {"Type": "layers", "Layers": rec["layers"]}, "Size": rec.get("size", 0),
                    "History": cfg.get("history", [])})
    _out(json.dumps(out, indent=4) + "\n")
    return 0


def _used_by(store, image_id):
    return store.users_of(image_id)


def _delete_images(store, ids):
    """Remove image records and the layers no other image uses (store.lock held exclusively)."""
    def change(images):
        images[:] = [r for r in images if r["id"] not in ids]
        return images
    left = store.modify(change)
    used = {d for r in left for d in r["layers"]}
    return used


def rmi(argv, ctx):
    opts, pos = _args(argv, "rmi", {"-f": "force", "--force": "force", "-a": "all", "--all": "all"}, {},
                      (0, None))
    if "help" in opts:
        _out("usage: pirun rmi IMAGE...\n\nRemove images (by name: the name; the image when no name is left).\n")
        return 0
    from runtime.image.store import StoreError
    store = _store(ctx)
    fd = store.exclusive()
    try:
        store.remove(store.debris())
        recs = store.read_images()
        targets = list(pos) if not opts.get("all") else [r["id"] for r in recs]
        if not targets:
            raise SpecError("rmi: give an IMAGE (or -a)")
        lines, delete = [], set()
        for text in targets:
            rec = _find(store, text, recs)
            users = _used_by(store, rec["id"])
            if users:
                c = store.container_record(users[0]) or {}
                who = users[0][:12] + (f" ({c['name']})" if c.get("name") else "")
                raise StoreError(f"image {text} is in use by container {who}",
                                 fix="remove the container first (pirun rm), or stop it")
            from runtime.image import ref
            by_name = not (ref.is_id_prefix(text) and rec["id"].startswith(text.removeprefix("sha256:")))
            if by_name and len(rec["names"]) > 1:
                wanted = [n for n in rec["names"] if store.lookup(text, [dict(rec, names=[n])])]
                def untag(images, rid=rec["id"], drop=wanted):
                    for r in images:
                        if r["id"] == rid:
                            r["names"] = [n for n in r["names"] if n not in drop]
                store.modify(untag)
                lines += [f"Untagged: {n}" for n in wanted]
                continue
            lines += [f"Untagged: {n}" for n in rec["names"]] + [f"Deleted: {rec['id']}"]
            delete.add(rec["id"])
        if delete:
            used = _delete_images(store, delete)
            gone = [store.layer_dir(d) for r in recs if r["id"] in delete for d in r["layers"] if d not in used]
            store.remove(sorted(set(gone)))
    finally:
        os.close(fd)
    _out("".join(line + "\n" for line in lines))
    return 0


def prune(argv, ctx):
    opts, _ = _args(argv, "image prune", {"-a": "all", "--all": "all", "-f": "force", "--force": "force"}, {},
                    (0, 0))
    if "help" in opts:
        _out("usage: pirun image prune [-a]\n\nRemove images without a name (-a: every image no container "
             "uses), layers no image uses and what interrupted commands left behind.\n")
        return 0
    store = _store(ctx, clean=False)
    fd = store.exclusive()
    try:
        store.remove(store.debris())                 # dead containers first: their images become unused
        recs = store.read_images()
        delete = {r["id"] for r in recs if (opts.get("all") or not r["names"]) and not _used_by(store, r["id"])}
        if delete:
            _delete_images(store, delete)
        store.remove(store.debris(layers=True))
    finally:
        os.close(fd)
    _out("".join(f"{i}\n" for i in sorted(delete)))
    return 0


def _du_child(paths):
    out = []
    for p in paths:
        total = 0
        for dirpath, dirnames, filenames in os.walk(p):
            for n in dirnames + filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
                except OSError:
                    pass
        out.append(str(total))
    return " ".join(out)


def container_sizes(store, cids):
    """Disk use (bytes) of containers' writable layers (measured in a user namespace: the files belong
    to subordinate IDs)."""
    if not cids:
        return {}
    from runtime.image import userns
    sizes = userns.run(_du_child, [f"{store.containers}/{c}/upper" for c in cids]).split()
    return dict(zip(cids, (int(s) for s in sizes)))


def system_df(argv, ctx):
    opts, _ = _args(argv, "system df", {"-v": "verbose", "--verbose": "verbose"}, {"--format": "format"},
                    (0, 0))
    if "help" in opts:
        _out("usage: pirun system df\n\nDisk used by images and containers.\n")
        return 0
    store = _store(ctx)
    recs = store.images()
    cids = store.container_ids()
    live = [c for c in cids if store.container_alive(c)]
    active_images = {(store.container_record(c) or {}).get("image") for c in live}
    layers = {d for r in recs for d in r["layers"]}
    layer_size = {d: store.layer_size(d) for d in layers}
    active_layers = {d for r in recs if r["id"] in active_images for d in r["layers"]}
    img_size = sum(layer_size.values())
    img_reclaim = sum(s for d, s in layer_size.items() if d not in active_layers)
    sizes = container_sizes(store, cids)
    c_size = sum(sizes.values())
    c_reclaim = sum(s for c, s in sizes.items() if c not in live)
    rows = [("TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"),
            ("Images", str(len(recs)), str(sum(1 for r in recs if r["id"] in active_images)), human_size(img_size),
             f"{human_size(img_reclaim)} ({round(100 * img_reclaim / img_size) if img_size else 0}%)"),
            ("Containers", str(len(cids)), str(len(live)), human_size(c_size),
             f"{human_size(c_reclaim)} ({round(100 * c_reclaim / c_size) if c_size else 0}%)"),
            ("Local Volumes", "0", "0", "0B", "0B (0%)")]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    _out("".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in rows))
    return 0
