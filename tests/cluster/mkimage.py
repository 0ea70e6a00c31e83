#!/usr/bin/env python3
"""Builds a single-layer container image archive (docker-archive format, which
`ctr images import` reads) from local files, offline. No registry, no Docker engine.

  mkimage.py -t dso.local/busybox:1 -o out.tar --file /bin/busybox:/bin/busybox \
      --link /bin/sh:busybox --entrypoint /bin/sh --user 65532:65532
"""
import argparse, hashlib, io, json, os, tarfile, time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-t", "--tag", required=True)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--file", action="append", default=[], help="SRC:DEST[:MODE] (octal mode)")
    ap.add_argument("--link", action="append", default=[], help="DEST:TARGET symlink")
    ap.add_argument("--dir", action="append", default=[], help="DEST[:MODE] empty directory")
    ap.add_argument("--entrypoint", action="append", default=[])
    ap.add_argument("--cmd", action="append", default=[])
    ap.add_argument("--user", default="")
    ap.add_argument("--env", action="append", default=[])
    a = ap.parse_args()

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made = set()

        def parents(dest):
            parts = dest.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made:
                    made.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(ti)

        for spec in a.dir:
            dest, _, mode = spec.partition(":")
            parents(dest + "/x")
            ti = tarfile.TarInfo(dest.strip("/"))
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, int(mode or "755", 8), 0
            tar.addfile(ti)
        for spec in a.file:
            src, dest, *mode = spec.split(":")
            parents(dest)
            data = open(src, "rb").read()
            ti = tarfile.TarInfo(dest.strip("/"))
            ti.size, ti.mtime = len(data), 0
            ti.mode = int(mode[0], 8) if mode else (os.stat(src).st_mode & 0o777)
            tar.addfile(ti, io.BytesIO(data))
        for spec in a.link:
            dest, target = spec.split(":", 1)
            parents(dest)
            ti = tarfile.TarInfo(dest.strip("/"))
            ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, target, 0
            tar.addfile(ti)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()

    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": a.entrypoint or None,
            "Cmd": a.cmd or None,
            "User": a.user,
            "Env": a.env or ["PATH=/bin:/usr/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "mkimage.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id[7:] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [a.tag], "Layers": [layer_name]}]

    with tarfile.open(a.output, "w") as out:
        for name, data in [
            (layer_name, layer_bytes),
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), int(time.time())
            out.addfile(ti, io.BytesIO(data))


if __name__ == "__main__":
    main()
