#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Regenerate the golden files used by tests/builtin_configs.rs.

The expected values come from upstream mkosi (the Python implementation), so
this needs a checkout of it:

    UPSTREAM=/path/to/mkosi python3 regenerate.py

Every case is run as `mkosi <args>` in an empty directory with a fixed host
(Debian trixie on x86-64). Only the settings listed for each kind of case are
recorded, with the path of the resources directory replaced by @RESOURCES@.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = "0e4a1a5d-0000-4000-8000-000000000001"

INITRD_KEYS = [
    "Architecture", "Bootable", "CleanPackageMetadata", "Distribution", "ExtraTrees", "Format", "Image",
    "KernelInitrdModules", "KernelModules", "Locale", "MakeInitrd", "ManifestFormat", "Output",
    "Packages", "PostInstallationScripts", "Profiles", "Release", "RemoveFiles", "RemovePackages",
    "Repositories", "SplitArtifacts", "WithDocs",
]
TOOLS_KEYS = [
    "Architecture", "Distribution", "ExtraTrees", "Format", "Image", "Output", "Packages", "PrepareScripts",
    "Profiles", "Release", "Repositories", "SkeletonTrees",
]
VM_KEYS = [
    "Architecture", "BiosBootloader", "Bootable", "Bootloader", "Distribution", "Packages", "Release",
    "Repositories",
]
ADDON_KEYS = [
    "Bootable", "Distribution", "ExtraTrees", "Format", "ManifestFormat", "Packages", "RemoveFiles",
    "SplitArtifacts",
]
INITRD_PROFILES = ["lvm", "network", "nfs", "pkcs11", "plymouth", "raid"]
TOOLS_PROFILES = ["devel", "misc", "package-manager", "runtime"]


def base(distribution, release=None, arch="x86-64"):
    args = ["-d", distribution, f"--architecture={arch}", f"--seed={SEED}"]
    if release:
        args += ["-r", release]
    return args


# A disk image with a kernel package gets the default initrd.
KERNELS = {
    "arch": "linux",
    "debian": "linux-image-amd64",
    "kali": "linux-image-amd64",
    "opensuse": "kernel-default",
    "postmarketos": "linux-virt",
    "ubuntu": "linux-image-generic",
}


def initrd(distribution):
    return ["-t", "disk", "-p", KERNELS.get(distribution, "kernel")]


def cases():
    for d, r in (("debian", "trixie"), ("fedora", None)):
        yield f"initrd-{d}", base(d, r) + initrd(d), "default-initrd", INITRD_KEYS
        for p in INITRD_PROFILES:
            yield f"initrd-{d}-{p}", base(d, r) + initrd(d) + [f"--initrd-profile={p}"], "default-initrd", INITRD_KEYS

    for name, d, r, arch, extra in (
        ("initrd-debian-bookworm", "debian", "bookworm", "x86-64", []),
        ("initrd-debian-arm64", "debian", "trixie", "arm64", []),
        ("initrd-kali", "kali", None, "x86-64", []),
        ("initrd-ubuntu", "ubuntu", None, "x86-64", []),
        ("initrd-ubuntu-jammy-plymouth", "ubuntu", "jammy", "x86-64", ["--initrd-profile=plymouth"]),
        ("initrd-arch", "arch", None, "x86-64", ["--initrd-profile=network", "--initrd-profile=nfs"]),
        ("initrd-opensuse", "opensuse", None, "x86-64", ["--initrd-profile=plymouth", "--initrd-profile=nfs"]),
        ("initrd-centos", "centos", None, "x86-64", []),
        ("initrd-centos-epel", "centos", "9", "x86-64", ["--repositories=epel"]),
        ("initrd-fedora-40", "fedora", "40", "arm64", []),
        ("initrd-postmarketos", "postmarketos", None, "x86-64", ["--initrd-profile=network"]),
        ("initrd-azure", "azure", None, "x86-64", []),
    ):
        yield name, base(d, r, arch) + initrd(d) + extra, "default-initrd", INITRD_KEYS

    yield "initrd-fedora-uki", base("fedora") + ["-t", "uki", "--include=mkosi-initrd"], "main", INITRD_KEYS

    def tools(d, r=None):
        return base(d, r) + ["--tools-tree=default", f"--tools-tree-distribution={d}"] + (
            [f"--tools-tree-release={r}"] if r else []
        )

    yield "tools-debian", tools("debian", "trixie"), "tools", TOOLS_KEYS
    for p in TOOLS_PROFILES:
        yield f"tools-debian-{p}", tools("debian", "trixie") + [f"--tools-tree-profile={p}"], "tools", TOOLS_KEYS
    for d, r in (
        ("debian", "bookworm"), ("fedora", None), ("ubuntu", None), ("kali", None), ("arch", None),
        ("opensuse", None), ("centos", None), ("postmarketos", None), ("azure", None),
    ):
        yield f"tools-{d}" + (f"-{r}" if r else ""), tools(d, r), "tools", TOOLS_KEYS

    # gui and debug can't be selected with --tools-tree-profile=.
    for d, profiles in (
        ("debian", ["gui"]), ("debian", ["debug"]), ("fedora", ["gui", "debug"]), ("arch", ["gui", "debug"]),
    ):
        yield (
            f"dependencies-{d}-{'-'.join(profiles)}",
            ["dependencies", "--"] + base(d) + [f"--profile={p}" for p in profiles],
            None,
            None,
        )

    for name, d, r, arch in (
        ("vm-debian", "debian", "trixie", "x86-64"),
        ("vm-debian-arm64", "debian", "trixie", "arm64"),
        ("vm-fedora", "fedora", None, "x86-64"),
        ("vm-ubuntu", "ubuntu", None, "x86-64"),
        ("vm-arch", "arch", None, "x86-64"),
        ("vm-opensuse", "opensuse", None, "x86-64"),
        ("vm-centos", "centos", None, "ppc64-le"),
    ):
        yield name, base(d, r, arch) + ["--include=mkosi-vm"], "main", VM_KEYS

    yield "addon", base("debian") + ["--include=mkosi-addon"], "main", ADDON_KEYS


def normalize(value):
    if isinstance(value, str):
        return re.sub(r"/tmp/tmp[A-Za-z0-9_]+/resources", "@RESOURCES@", value)
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    return value


def main():
    upstream = os.environ.get("UPSTREAM")
    if not upstream:
        sys.exit("Set $UPSTREAM to a checkout of upstream mkosi")

    env = dict(os.environ)
    env.update(
        PYTHONPATH=upstream,
        MKOSI_HOST_DISTRIBUTION="debian",
        MKOSI_HOST_RELEASE="trixie",
    )

    for old in HERE.glob("*.json"):
        old.unlink()

    for name, args, select, keys in cases():
        with tempfile.TemporaryDirectory() as cwd:
            argv = args if args[0] == "dependencies" else args + ["--json", "summary"]
            out = subprocess.run(
                [sys.executable, "-m", "mkosi", *argv], cwd=cwd, env=env, check=True, capture_output=True,
                text=True,
            ).stdout

        if select is None:
            golden = {"args": args, "lines": out.splitlines()}
        else:
            summary = json.loads(out)
            if select == "tools":
                image = summary["Tools"]
            else:
                image = next(i for i in summary["Images"] if i["Image"] == select)
            golden = {
                "args": args,
                "image": select,
                "expect": {k: normalize(image[k]) for k in keys},
            }

        (HERE / f"{name}.json").write_text(json.dumps(golden, indent=2) + "\n")
        print(f"wrote {name}.json")


if __name__ == "__main__":
    main()
