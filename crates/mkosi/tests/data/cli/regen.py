#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Record upstream mkosi's behaviour for the command line corpus.

Usage: regen.py [--upstream DIR] [--only SUBSTRING]

cases.txt (next to this script) holds one case per block: a line
`$ ARGUMENTS` (split like a POSIX shell does, `@TREE@` is the scratch tree)
followed by result lines starting with `>`, which this script rewrites;
everything else (comments starting with `#`, blank lines) is kept as is.

For every case two things are recorded:

  > parse 0 {ARGS}          upstream's argparse stage (create_argument_parser()
                            plus Args.from_namespace()) succeeded; ARGS is the
                            resulting Args as JSON (like the `Args` object
                            upstream passes to scripts), normalized, as the
                            difference to "Args" in baseline.json (plus Verb)
  > parse N LAST-LINE       the argparse stage exited with status N
                            (2: usage error, 1: die()) and this stderr line
  > parse 0 help            it printed the help text and exited (-h/--help)
  > parse 0 version         it printed the version and exited

and, for summary, cat-config and help and when upstream dies before doing
any work (arguments after a verb that takes none, --rerun-build-scripts
misuse), but not for the verbs that would do real work (build, shell, boot,
vm, ...), the outcome of running the whole of `python3 -m mkosi ARGUMENTS`:

  > run N                   its exit status
  > stderr LINE             (failures) the last line of its stderr
  > stdout LINE             (success, not --json summary) its first line
  > warning LINE            (success) the first line of stderr, if any
  > json {DELTA}            (success with --json summary) the JSON output,
                            normalized, as the difference to baseline.json:
                            {"Images": [{changed keys}...], "Tools": ...}
                            where every image is compared against the main
                            image of "Json" in baseline.json

help.txt is upstream's `mkosi --help` for an 80 column terminal.

baseline.json holds upstream's Args without any arguments ("Args") and its
`mkosi --json summary` for the scratch tree ("Json"). The scratch tree is a copy of tree/ (next to this script),
run with that copy as working directory; its path becomes @TREE@, $HOME
becomes @HOME@, upstream's resources directory becomes @RESOURCES@, the user name in GenkeyCommonName becomes @USER@, and
values that differ between two runs (the random Seed) become @RANDOM@.

Upstream uses Python's argparse, whose behaviour differs slightly between
Python versions (for example how positional arguments interleaved with
options are matched); the corpus was recorded with the Python this script
runs under, which is printed at the top of cases.txt.

CI does not run this script (it has no upstream mkosi); the test
(crates/mkosi/tests/cli_compat.rs and the unit tests in src/cli.rs) only
reads the recorded results. Upstream is taken from $MKOSI_UPSTREAM or
--upstream (default /work/upstream).
"""

import argparse
import concurrent.futures
import getpass
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases.txt"

# Verbs whose run we record; the others would build or boot images.
RUN_VERBS = {"summary", "cat-config", "help"}

PARSE_SNIPPET = r"""
import argparse, json, sys
from mkosi.config import Args, JsonEncoder, create_argument_parser
from mkosi.log import log_setup
log_setup()
parser = create_argument_parser()
ns = argparse.Namespace()
parser.parse_args(json.loads(sys.argv[1]), ns)
args = Args.from_namespace(ns.__dict__)
print("ARGS " + json.dumps(args.to_dict(), cls=JsonEncoder))
"""


def environment(upstream: Path, home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.fspath(home),
        "PYTHONPATH": os.fspath(upstream),
        "MKOSI_HOST_DISTRIBUTION": "debian",
        "MKOSI_HOST_RELEASE": "trixie",
        "TERM": "dumb",
    }


# Upstream unpacks its resources (the built-in configurations) into a fresh
# temporary directory on every run.
RESOURCES_RE = re.compile(re.escape(tempfile.gettempdir()) + r"/tmp[a-z0-9_]+/resources")


class Scratch:
    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="mkosi-cli-")
        root = Path(self.tmp.name).resolve()
        self.tree = root / "tree"
        self.home = root / "home"
        self.home.mkdir()
        shutil.copytree(HERE / "tree", self.tree, symlinks=True)
        # git keeps no file modes but the executable bit.
        os.chmod(self.tree / "secret.key", 0o600)

    def close(self) -> None:
        self.tmp.cleanup()

    def normalize_str(self, s: str) -> str:
        s = s.replace(os.fspath(self.tree), "@TREE@").replace(os.fspath(self.home), "@HOME@")
        return RESOURCES_RE.sub("@RESOURCES@", s)

    def normalize(self, v):
        if isinstance(v, dict):
            return {self.normalize_str(k): self.normalize(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.normalize(x) for x in v]
        if isinstance(v, str):
            return self.normalize_str(v)
        return v


def split(line: str) -> list[str]:
    return shlex.split(line)


def error_line(text: str) -> str:
    """The line of stderr carrying the error: argparse's `mkosi: error: …`, or
    the last `‣ ` line that is not a hint, or the last line."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("mkosi: error:"):
            return line
    for line in reversed(lines):
        if line.startswith("‣ ") and not line.startswith("‣ ("):
            return line
    return lines[-1] if lines else ""


def upstream_parse(argv: list[str], upstream: Path) -> tuple[str, str]:
    s = Scratch()
    try:
        argv = [a.replace("@TREE@", os.fspath(s.tree)) for a in argv]
        r = subprocess.run(
            [sys.executable, "-c", PARSE_SNIPPET, json.dumps(argv)],
            cwd=s.tree,
            env=environment(upstream, s.home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if r.returncode == 0 and r.stdout.startswith("ARGS "):
            args = json.loads(r.stdout.removeprefix("ARGS "))
            args = s.normalize(args)
            user = getpass.getuser()
            if args.get("GenkeyCommonName", "").endswith(f"of {user}"):
                args["GenkeyCommonName"] = args["GenkeyCommonName"].removesuffix(user) + "@USER@"
            return "0", json.dumps(args, sort_keys=True)
        if r.returncode == 0 and r.stdout.startswith("usage:"):
            return "0", "help"
        if r.returncode == 0 and r.stdout.startswith("mkosi "):
            return "0", "version"
        return str(r.returncode), s.normalize_str(error_line(r.stderr))
    finally:
        s.close()


def upstream_run(argv: list[str], upstream: Path) -> tuple[int, str, str, object]:
    s = Scratch()
    try:
        argv = [a.replace("@TREE@", os.fspath(s.tree)) for a in argv]
        r = subprocess.run(
            [sys.executable, "-m", "mkosi", *argv],
            cwd=s.tree,
            env=environment(upstream, s.home),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        parsed = None
        if r.returncode == 0 and r.stdout.lstrip().startswith("{"):
            parsed = s.normalize(json.loads(r.stdout))
        return r.returncode, s.normalize_str(r.stdout), s.normalize_str(r.stderr), parsed
    finally:
        s.close()


def mark_random(a, b):
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return {k: mark_random(a[k], b[k]) for k in a}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [mark_random(x, y) for x, y in zip(a, b)]
    return a if a == b else "@RANDOM@"


def summary_json(argv: list[str], upstream: Path) -> object:
    rc1, _, _, j1 = upstream_run(argv, upstream)
    rc2, _, _, j2 = upstream_run(argv, upstream)
    assert rc1 == 0 and rc2 == 0 and j1 is not None and j2 is not None, argv
    return mark_random(j1, j2)


def delta(image: dict, base: dict) -> dict:
    return {k: v for k, v in image.items() if base.get(k, "@MISSING@") != v}


NEEDS_BUILD = {"build", "shell", "boot", "vm", "qemu", "serve", "burn", "sysupdate"}
SUPPORTS_CMDLINE = {
    "build", "shell", "boot", "vm", "qemu", "ssh", "journalctl", "coredumpctl", "burn", "completion",
    "documentation", "sysupdate", "box", "sandbox", "dependencies",
}


def dies_early(args: dict) -> bool:
    """Whether upstream's parse_config() dies before doing any work."""
    verb = args["Verb"]
    return bool(
        (args["RerunBuildScripts"] and (verb not in NEEDS_BUILD or args["Force"]))
        or (args["Cmdline"] and verb not in SUPPORTS_CMDLINE)
    )


def record(argv: list[str], upstream: Path, baseline: dict) -> list[str]:
    out = []
    code, what = upstream_parse(argv, upstream)

    args = None
    verb = None
    if code == "0" and what.startswith("{"):
        args = json.loads(what)
        verb = args["Verb"]
        d = {"Verb": verb} | delta(args, baseline["Args"])
        out.append(f"> parse 0 {json.dumps(d, sort_keys=True)}")
    else:
        out.append(f"> parse {code} {what}")
    if code == "0" and what in ("help", "version"):
        verb = "help"
    if code != "0" or (verb not in RUN_VERBS and not (args and dies_early(args))):
        return out

    rc, stdout, stderr, parsed = upstream_run(argv, upstream)
    out.append(f"> run {rc}")
    if rc != 0:
        out.append(f"> stderr {error_line(stderr)}")
    elif parsed is not None:
        parsed = summary_json(argv, upstream)
        base = baseline["Json"]["Images"][0]
        d = {
            "Images": [delta(i, base) for i in parsed["Images"]],
            "Tools": None if parsed["Tools"] is None else delta(parsed["Tools"], base),
        }
        out.append(f"> json {json.dumps(d, sort_keys=True)}")
    else:
        first = stdout.splitlines()[0] if stdout else ""
        out.append(f"> stdout {first}")
    if rc == 0 and stderr.strip():
        out.append(f"> warning {stderr.splitlines()[0]}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default=os.environ.get("MKOSI_UPSTREAM", "/work/upstream"))
    p.add_argument("--only", help="only regenerate cases whose argument line contains this")
    a = p.parse_args()

    upstream = Path(a.upstream).resolve()
    if not (upstream / "mkosi" / "__init__.py").exists():
        sys.exit(f"{upstream} is not an upstream mkosi checkout")

    code, default_args = upstream_parse([], upstream)
    assert code == "0", default_args
    baseline = {"Args": json.loads(default_args), "Json": summary_json(["--json", "summary"], upstream)}
    (HERE / "baseline.json").write_text(json.dumps(baseline, indent=4, sort_keys=True) + "\n")

    s = Scratch()
    try:
        env = environment(upstream, s.home) | {"COLUMNS": "80"}
        r = subprocess.run(
            [sys.executable, "-m", "mkosi", "--help"], cwd=s.tree, env=env, capture_output=True, text=True, check=True
        )
        (HERE / "help.txt").write_text(r.stdout)
    finally:
        s.close()

    lines = CASES.read_text().splitlines()
    blocks: list[tuple[str, list[str]]] = []  # (line, old results); line "" for other lines
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.startswith("# Recorded with Python") or line.startswith(">"):
            continue
        old = []
        if line.startswith("$ "):
            while i < len(lines) and lines[i].startswith(">"):
                old.append(lines[i])
                i += 1
        blocks.append((line, old))

    def work(block: tuple[str, list[str]]) -> list[str]:
        line, old = block
        if not line.startswith("$ ") or (a.only and a.only not in line):
            return old
        return record(split(line[2:]), upstream, baseline)

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        results = list(pool.map(work, blocks))

    out = [f"# Recorded with Python {platform.python_version()}"]
    for (line, _), res in zip(blocks, results):
        out.append(line)
        out.extend(res)
    CASES.write_text("\n".join(out) + "\n")
    print(f"{sum(1 for line, _ in blocks if line.startswith('$ '))} cases")

if __name__ == "__main__":
    main()
