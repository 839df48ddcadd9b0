#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Record upstream mkosi's human readable `summary` and `cat-config` output.

Usage: regen.py [--upstream DIR] [CASE...]

Every directory next to this script is a case:

  tree/           the configuration tree; mkosi runs with (a copy of) it as
                  working directory
  source          instead of tree/: a path (relative to the case) of a
                  directory holding tree/, env and setup (used to reuse
                  crates/mkosi-config/tests/compat/all-settings)
  args            optional command line arguments, one per line (empty lines
                  are empty arguments), put before the verb
  env             optional KEY=VALUE lines added to the environment
  setup           optional `chmod MODE PATH` lines applied to the copied tree
  requires        optional: built-in configurations (resources/) the case
                  needs; the test skips the case while they are missing
  summary.txt     upstream's `mkosi summary` (written by this script)
  cat-config.txt  upstream's `mkosi cat-config` (written by this script)

Output goes to a pipe, so upstream uses no ANSI styling. Normalization: the
tree's path becomes @TREE@, $HOME becomes @HOME@, upstream's resources
directory becomes @RESOURCES@, and UUIDs on lines that differ between two
runs (the random Seed) become @RANDOM@.

CI does not run this script (it has no upstream mkosi). Upstream is taken
from $MKOSI_UPSTREAM or --upstream (default /work/upstream).
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESOURCES_RE = re.compile(re.escape(tempfile.gettempdir()) + r"/tmp[a-z0-9_]+/resources")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def read_lines(p: Path) -> list[str]:
    if not p.exists():
        return []
    return [line for line in p.read_text().splitlines() if line.strip()]


def source_dir(case: Path) -> Path:
    if (case / "source").exists():
        return (case / (case / "source").read_text().strip()).resolve()
    return case


def run(case: Path, verb: str, upstream: Path) -> tuple[int, str, str]:
    src = source_dir(case)
    with tempfile.TemporaryDirectory(prefix="mkosi-summary-") as tmp:
        root = Path(tmp).resolve()
        tree = root / "tree"
        home = root / "home"
        home.mkdir()
        shutil.copytree(src / "tree", tree, symlinks=True)
        for line in read_lines(src / "setup"):
            cmd, *rest = line.split()
            if cmd == "chmod":
                os.chmod(tree / rest[1], int(rest[0], 8))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.fspath(home),
            "PYTHONPATH": os.fspath(upstream),
            "MKOSI_HOST_DISTRIBUTION": "debian",
            "MKOSI_HOST_RELEASE": "trixie",
            "TERM": "dumb",
        }
        for line in read_lines(src / "env") + read_lines(case / "env"):
            k, _, v = line.partition("=")
            env[k] = v
        args = (case / "args").read_text().splitlines() if (case / "args").exists() else []
        r = subprocess.run(
            [sys.executable, "-m", "mkosi", *args, verb],
            cwd=tree,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )

        def normalize(s: str) -> str:
            s = s.replace(os.fspath(tree), "@TREE@").replace(os.fspath(home), "@HOME@")
            return RESOURCES_RE.sub("@RESOURCES@", s)

        return r.returncode, normalize(r.stdout), normalize(r.stderr)


def regen(case: Path, verb: str, upstream: Path) -> str:
    rc1, out1, err1 = run(case, verb, upstream)
    if rc1 != 0:
        sys.exit(f"{case.name}: upstream {verb} failed:\n{err1}")
    rc2, out2, _ = run(case, verb, upstream)
    a, b = out1.split("\n"), out2.split("\n")
    if rc2 != 0 or len(a) != len(b):
        sys.exit(f"{case.name}: upstream {verb} differs between runs")
    lines = [x if x == y else UUID_RE.sub("@RANDOM@", x) for x, y in zip(a, b)]
    (case / f"{verb}.txt").write_text("\n".join(lines))
    return "ok"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default=os.environ.get("MKOSI_UPSTREAM", "/work/upstream"))
    p.add_argument("cases", nargs="*")
    a = p.parse_args()

    upstream = Path(a.upstream).resolve()
    if not (upstream / "mkosi" / "__init__.py").exists():
        sys.exit(f"{upstream} is not an upstream mkosi checkout")

    cases = [HERE / c for c in a.cases] if a.cases else sorted(p for p in HERE.iterdir() if p.is_dir())
    for case in cases:
        for verb in ("summary", "cat-config"):
            print(f"{case.name} {verb}: {regen(case, verb, upstream)}")


if __name__ == "__main__":
    main()
