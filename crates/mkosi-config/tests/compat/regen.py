#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Regenerate the expected results of the compatibility corpus from upstream mkosi.

Usage: regen.py [--upstream DIR] [--settings-only] [CASE...]

Without CASE arguments every case is regenerated, and so is settings.json:
upstream's settings table in a normalized form, which the test compares
against our table (names, options, scopes, default paths, parsers, defaults).

Every case directory next to this script holds:

  tree/           the configuration tree; mkosi runs with it as working directory
  args            command line arguments, one per line (`--json ... summary` is added)
  env             optional KEY=VALUE lines added to the (otherwise minimal) environment
  setup           optional commands applied to the copied tree before running:
                    chmod MODE PATH | mkdir PATH | symlink TARGET PATH | rm PATH
  location        optional, error cases: file=/line=/setting= our error must carry
  message         optional, error cases: the exact message (without location) we must print
  requires        optional: built-in configurations (resources/) the case needs
  expected.json   upstream's `mkosi --json summary`, normalized (written by this script)
  expected.error  upstream's stderr when it fails (written by this script)

The tree is copied to a temporary directory first (so file modes from `setup`
apply and paths are the same for every run). Normalization: the tree's path
becomes @TREE@, $HOME becomes @HOME@, upstream's resources directory
becomes @RESOURCES@, the host's default CA bundle in
ProxyPeerCertificate becomes @HOST_CA_BUNDLE@, and every value that differs
between two runs of upstream (random seeds, `random` UUIDs) becomes @RANDOM@.

CI does not run this script (it has no upstream mkosi); it is run manually
by developers after adding or changing a case. Upstream is taken from
$MKOSI_UPSTREAM or --upstream (default /work/upstream).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST_CA_BUNDLES = ("/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/certs/ca-certificates.crt")


def read_lines(p: Path) -> list[str]:
    if not p.exists():
        return []
    text = p.read_text()
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text else []


def apply_setup(case: Path, tree: Path) -> None:
    for line in read_lines(case / "setup"):
        if not line.strip() or line.startswith("#"):
            continue
        cmd, *rest = line.split()
        if cmd == "chmod":
            os.chmod(tree / rest[1], int(rest[0], 8))
        elif cmd == "mkdir":
            (tree / rest[0]).mkdir(parents=True, exist_ok=True)
        elif cmd == "symlink":
            (tree / rest[1]).symlink_to(rest[0])
        elif cmd == "rm":
            (tree / rest[0]).unlink()
        else:
            sys.exit(f"{case}/setup: unknown command {cmd}")


def run_once(case: Path, upstream: Path) -> tuple[int, str, str, str, str]:
    with tempfile.TemporaryDirectory(prefix="mkosi-compat-") as tmp:
        root = Path(tmp).resolve()
        tree = root / "tree"
        home = root / "home"
        home.mkdir()
        if (case / "tree").exists():
            shutil.copytree(case / "tree", tree, symlinks=True)
        else:
            tree.mkdir()
        apply_setup(case, tree)

        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.fspath(home),
            "PYTHONPATH": os.fspath(upstream),
            "MKOSI_HOST_DISTRIBUTION": "debian",
            "MKOSI_HOST_RELEASE": "trixie",
        }
        for line in read_lines(case / "env"):
            if line.strip():
                k, _, v = line.partition("=")
                env[k] = v.replace("@TREE@", os.fspath(tree)).replace("@HOME@", os.fspath(home))

        args = [a.replace("@TREE@", os.fspath(tree)) for a in read_lines(case / "args")]
        r = subprocess.run(
            [sys.executable, "-m", "mkosi", "--json", *args, "summary"],
            cwd=tree,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        return r.returncode, r.stdout, r.stderr, os.fspath(tree), os.fspath(home)


# Upstream unpacks its resources (the built-in configurations) into a fresh
# temporary directory on every run.
RESOURCES_RE = re.compile(re.escape(tempfile.gettempdir()) + r"/tmp[a-z0-9_]+/resources")


def normalize_str(s: str, tree: str, home: str) -> str:
    return RESOURCES_RE.sub("@RESOURCES@", s.replace(tree, "@TREE@").replace(home, "@HOME@"))


def normalize(v, tree: str, home: str, key: str = ""):
    if isinstance(v, dict):
        return {normalize_str(k, tree, home): normalize(x, tree, home, k) for k, x in v.items()}
    if isinstance(v, list):
        return [normalize(x, tree, home) for x in v]
    if isinstance(v, str):
        if key == "ProxyPeerCertificate" and v in HOST_CA_BUNDLES:
            return "@HOST_CA_BUNDLE@"
        return normalize_str(v, tree, home)
    return v


def mark_random(a, b):
    """Replace the leaves that differ between two runs with @RANDOM@."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return {k: mark_random(a[k], b[k]) for k in a}
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [mark_random(x, y) for x, y in zip(a, b)]
    return a if a == b else "@RANDOM@"


def regen(case: Path, upstream: Path) -> str:
    rc1, out1, err1, tree1, home1 = run_once(case, upstream)
    for stale in ("expected.json", "expected.error"):
        (case / stale).unlink(missing_ok=True)

    if rc1 != 0:
        err = "\n".join(normalize_str(line, tree1, home1) for line in err1.splitlines())
        (case / "expected.error").write_text(err + "\n")
        return "error"

    rc2, out2, _, tree2, home2 = run_once(case, upstream)
    if rc2 != 0:
        sys.exit(f"{case.name}: upstream failed on the second run only")

    j1 = normalize(json.loads(out1), tree1, home1)
    j2 = normalize(json.loads(out2), tree2, home2)
    result = mark_random(j1, j2)
    (case / "expected.json").write_text(json.dumps(result, indent=4, sort_keys=True) + "\n")
    return "ok"


def describe_item(parse) -> dict:
    """Normalize a list item parser of upstream's settings table."""
    import functools

    if isinstance(parse, functools.partial):
        kw = parse.keywords
        return {
            "kind": "path",
            "required": kw.get("required", True),
            "resolve": kw.get("resolve", True),
            "secret": kw.get("secret", False),
            "absolute": kw.get("absolute", False),
            "exclude_usr": list(kw.get("exclude", ())) == ["/usr"],
            "constants": list(kw.get("constants", ())),
        }
    name = getattr(parse, "__name__", repr(parse))
    cl = closure(parse)
    if name == "parse_tree":
        return {"kind": "tree", "required": cl["required"], "absolute": cl["absolute"], "directory": cl["directory"]}
    if name == "parse_enum":
        return {"kind": "enum", "type": cl["type"].__name__}
    return {
        "kind": {
            "str": "str",
            "parse_profile": "profile",
            "parse_kernel_module_filter_regexp": "kmod_regex",
            "parse_drive": "drive",
            "parse_simple_config": "uki_profile",
            "parse_environment": "environment",
            "parse_key_value": "key_value",
        }[name]
    }


def closure(fn) -> dict:
    if not getattr(fn, "__closure__", None):
        return {}
    return dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__)))


def describe_parser(parse) -> dict:
    name = parse.__name__
    cl = closure(parse)
    if name == "config_parse_list":
        return {
            "kind": "list",
            "delimiter": cl["delimiter"],
            "unescape": cl["unescape"],
            "reset": cl["reset"],
            "sort_packages": cl["key"] is not None,
            "globs": cl["expand_globs"],
            "item": describe_item(cl["parse"]),
        }
    if name == "config_parse_dict":
        return {
            "kind": "dict",
            "delimiter": cl["delimiter"],
            "unescape": cl["unescape"],
            "item": describe_item(cl["parse"]),
        }
    if name == "config_parse_path":
        d = describe_item(__import__("functools").partial(lambda: None, **{k: cl[k] for k in cl}))
        return d
    if name == "config_parse_enum":
        d = {"kind": "enum", "type": cl["type"].__name__}
        if "yes" in cl:
            d |= {"kind": "enum_bool", "yes": str(cl["yes"]), "no": str(cl["no"])}
        return d
    if name == "config_parse_filename":
        return {"kind": "filename", "hint": cl["hint"]}
    return {"kind": name.removeprefix("config_parse_")}


def lowercase_keys(v):
    if isinstance(v, dict):
        return {k.lower(): lowercase_keys(x) for k, x in v.items()}
    if isinstance(v, list):
        return [lowercase_keys(x) for x in v]
    return v


def dump_settings(upstream: Path) -> None:
    """Write upstream's settings table, normalized, to settings.json."""
    sys.path.insert(0, os.fspath(upstream))
    import typing

    from mkosi.config import SETTINGS, SETTINGS_LOOKUP_BY_DEST, Config, JsonEncoder

    out = []
    for s in SETTINGS:
        field = Config.fields().get(s.scope.removeprefix(s.dest))
        origin = typing.get_origin(field.type) if field else None
        args = typing.get_args(field.type) if field else []
        nullable = bool(field) and (origin in (dict, list, str) or (origin is typing.Union and type(None) in args))
        match = None
        if s.match:
            match = {"kind": s.match.__name__.removeprefix("config_match_")}
            cl = closure(s.match)
            if "allow_globs" in cl:
                match["globs"] = cl["allow_globs"]
            if "type" in cl:
                match["type"] = cl["type"].__name__
        # Defaults computed when upstream is imported.
        if s.dest == "seed":
            default = "@FRESH-UUID@"
        elif s.dest == "architecture":
            default = "@NATIVE@"
        elif s.default is not None:
            default = lowercase_keys(json.loads(json.dumps(s.default, cls=JsonEncoder)))
        else:
            default = None
        out.append(
            {
                "name": s.name,
                "field": SETTINGS_LOOKUP_BY_DEST[s.dest].name,
                "section": s.section,
                "compat_names": list(s.compat_names),
                "long": s.long.removeprefix("--"),
                "compat_longs": [c.removeprefix("--") for c in s.compat_longs],
                "short": s.short.removeprefix("-") if s.short else None,
                "short_const": json.loads(json.dumps(s.const, cls=JsonEncoder)) if s.const is not None else None,
                "scope": str(s.scope),
                "specifier": s.specifier or None,
                "paths": list(s.path_suffixes),
                "recursive_paths": list(s.recursive_path_suffixes),
                "read_text": s.path_read_text,
                "secret": s.path_secret,
                "tools": s.tools,
                "choices": s.choices,
                "nullable": nullable,
                "default": default,
                "factory": s.default_factory is not None,
                "factory_depends": [SETTINGS_LOOKUP_BY_DEST[d].name for d in s.default_factory_depends],
                "match": match,
                "parser": describe_parser(s.parse),
            }
        )
    (HERE / "settings.json").write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", default=os.environ.get("MKOSI_UPSTREAM", "/work/upstream"))
    p.add_argument("--settings-only", action="store_true", help="only regenerate settings.json")
    p.add_argument("cases", nargs="*")
    a = p.parse_args()

    upstream = Path(a.upstream).resolve()
    if not (upstream / "mkosi" / "__init__.py").exists():
        sys.exit(f"{upstream} is not an upstream mkosi checkout")

    if not a.cases or a.settings_only:
        dump_settings(upstream)
        print("settings.json: ok")
    if a.settings_only:
        return

    cases = [HERE / c for c in a.cases] if a.cases else sorted(p for p in HERE.iterdir() if p.is_dir())
    for case in cases:
        if not (case / "args").exists() and not (case / "tree").exists():
            continue
        print(f"{case.name}: {regen(case, upstream)}")


if __name__ == "__main__":
    main()
