#!/usr/bin/env python3
"""Fails when the images the tests run differ from what init-image/Dockerfile builds.

    tests/check-image-recipe.py IMAGES_DIR

IMAGES_DIR holds the docker-archive files tests/images.sh built (<binary>.tar). For each of the
recipe's binaries, the Dockerfile's stage of that name must give the same image: the same files
(the binary at /<binary>, the CA bundle, nothing else), user, entrypoint and environment; and the
Dockerfile's build must use the recipe's target environment, RUSTFLAGS, profile and binaries
(init-image/recipe.env). Prints what it compared; exits 1 naming every difference."""
import json
import re
import shlex
import sys
import tarfile
from pathlib import Path

repo = Path(__file__).resolve().parent.parent
recipe = {}
for line in (repo / "init-image/recipe.env").read_text().splitlines():
    if "=" in line and not line.lstrip().startswith("#"):
        key, value = line.split("=", 1)
        recipe[key.strip()] = " ".join(shlex.split(value))
dockerfile = (repo / "init-image/Dockerfile").read_text()
problems = []


def expect(what, got, want):
    status = "ok" if got == want else "DIFFERS"
    print(f"  {what}: image/recipe {want!r} vs Dockerfile {got!r}: {status}")
    if got != want:
        problems.append(f"{what}: the tests use {want!r}, init-image/Dockerfile has {got!r}")


# The build stage: one RUN with the target triple, RUSTFLAGS, profile and packages.
run = " ".join(re.findall(r"^RUN (.*?)(?=^\S|\Z)", dockerfile, re.S | re.M)).replace("\\\n", " ")
binaries = recipe["RECIPE_BINARIES"].split()
print("build:")
m = re.search(r'unknown-linux-(\w+)"', run)
expect("target environment", m.group(1) if m else None, recipe["RECIPE_TARGET_ENV"])
m = re.search(r'RUSTFLAGS="([^"]*)"', run)
expect("RUSTFLAGS", m.group(1) if m else None, recipe["RECIPE_RUSTFLAGS"])
m = re.search(r"--profile (\S+)", run)
expect("profile", m.group(1) if m else None, recipe["RECIPE_PROFILE"])
expect("packages", sorted(re.findall(r"-p (\S+)", run)), sorted(binaries))
expect("binaries", sorted(re.findall(r"--bin (\S+)", run)), sorted(binaries))


def stage(name):
    m = re.search(rf"^FROM \S+ AS {re.escape(name)}\n(.*?)(?=^FROM |\Z)", dockerfile, re.S | re.M)
    return m.group(1) if m else ""


base = stage("base")
images = Path(sys.argv[1])
for b in binaries:
    print(f"{b}:")
    body = base + stage(b)
    if not stage(b):
        problems.append(f"init-image/Dockerfile has no stage {b}")
    with tarfile.open(images / f"{b}.tar") as archive:
        manifest = json.load(archive.extractfile("manifest.json"))[0]
        config = json.load(archive.extractfile(manifest["Config"]))["config"]
        layers = manifest["Layers"]
        with tarfile.open(fileobj=archive.extractfile(layers[0])) as layer:
            files = sorted("/" + m.name.lstrip("./") for m in layer.getmembers() if m.isfile())
    expect("layers", 1, len(layers))
    copied = sorted(dest for _, dest in re.findall(r"^COPY --from=build (\S+) (\S+)$", body, re.M))
    expect("files", copied, files)
    m = re.search(r"^USER (\S+)$", body, re.M)
    expect("user", m.group(1) if m else None, config.get("User"))
    m = re.search(r"^ENTRYPOINT (\[.*\])$", body, re.M)
    expect("entrypoint", json.loads(m.group(1)) if m else None, config.get("Entrypoint"))
    env = sorted(re.findall(r"^ENV (\S+)$", body, re.M))
    expect("environment", env, sorted(e for e in config.get("Env") or [] if not e.startswith("PATH=")))
if problems:
    print("image recipe drift:\n  " + "\n  ".join(problems), file=sys.stderr)
    sys.exit(1)
print("the tested images and init-image/Dockerfile follow one recipe")
