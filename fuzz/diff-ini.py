#!/usr/bin/env python3
# Differential check of our INI parser against upstream's parse_ini() on a set
# of files (default: fuzz/corpus/ini/*; non-UTF-8 files are skipped, upstream
# cannot read them either). With --random N, N random inputs built from
# characters the two parsers may treat differently (Unicode whitespace and
# line breaks, brackets, '=', '#', indentation) are compared instead.
#
#   cargo build --release --example ini_events && ./diff-ini.py [--random N] [FILE...]
import json, os, pathlib, random, subprocess, sys, tempfile

here = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, os.environ.get("UPSTREAM", "/work/upstream"))
import logging
logging.disable(logging.CRITICAL)
from mkosi.config import parse_ini  # noqa: E402

args = sys.argv[1:]
if args[:1] == ["--random"]:
    n = int(args[1])
    rng = random.Random(int(os.environ.get("SEED", "1")))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="diff-ini-"))
    pieces = ["[", "]", "=", "#", " ", "  ", "\t", "\n", "\n", "\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d",
              "\x1e", "\x1f", "\x85", "\u2028", "\u2029", "\xa0", "\u3000", "\u200b", "\ufeff", "a", "B", "Key",
              "Match", "Content", "é", "x=y", "[Output]", "\n  ", "\n\t", "%", ";"]
    ws = [" ", "\t", "\v", "\f", "\x1c", "\x1f", "\x85", "\xa0", "\u2028", "\u3000", "\u200b", "\ufeff", ""]
    nl = ["\n", "\n", "\n", "\r\n", "\r", "\v", "\f", "\x1c", "\x1e", "\x85", "\u2028", "\u2029"]

    def w():
        return "".join(rng.choice(ws) for _ in range(rng.choice([0, 0, 1, 2])))

    def line():
        k = rng.random()
        if k < 0.15:
            return w() + "[" + w() + rng.choice(["Match", "Content", "Output", "", " ", "A]B", "[x"]) + w() + "]" + w()
        if k < 0.6:
            return (w() + rng.choice(["Key", "Packages", "K#ey", "=", "", "a b"]) + w() + rng.choice(["=", "==", ""])
                    + w() + rng.choice(["value", "", "a#b", "v=w", "x y", "%"]) + w())
        if k < 0.8:
            return rng.choice(["  ", "\t", " ", "\xa0", "\x1c"]) + rng.choice(["cont", "[Output]", "# c", "k=v", ""])
        return w() + rng.choice(["# comment", "", ";x"]) + w()

    args = []
    for i in range(n):
        text = "".join(line() + rng.choice(nl) for _ in range(rng.randint(1, 12)))
        if rng.random() < 0.3:
            text = "".join("  " + l for l in text.splitlines(True))
        f = tmp / f"r{i}"
        f.write_text(text, encoding="utf-8", newline="")
        args.append(str(f))
files = args or sorted(str(p) for p in (here / "corpus" / "ini").iterdir())
utf8 = []
for f in files:
    try:
        pathlib.Path(f).read_bytes().decode("utf-8")
        utf8.append(f)
    except UnicodeDecodeError:
        pass

exe = here / "target" / "release" / "examples" / "ini_events"
ours = {}
for i in range(0, len(utf8), 500):
    out = subprocess.run([exe, *utf8[i:i + 500]], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        r = json.loads(line)
        ours[r["file"]] = r

diffs = 0
nonempty = 0
for f in utf8:
    try:
        up = {"events": [list(e) for e in parse_ini(pathlib.Path(f))]}
    except SystemExit:
        up = {"error": True}
    except Exception as e:  # noqa: BLE001
        up = {"error": repr(e)}
    o = ours.get(f, {"error": "missing"})
    nonempty += bool(up.get("events"))
    if ("error" in up) != ("error" in o) or up.get("events") != o.get("events"):
        diffs += 1
        if diffs <= 10:
            print(f"DIFF {f}\n  upstream: {json.dumps(up)[:400]}\n  ours:     {json.dumps(o)[:400]}")
print(f"{len(utf8)} files compared ({nonempty} parse to events upstream), {diffs} differ")
sys.exit(1 if diffs else 0)
