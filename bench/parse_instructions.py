"""Instructions the parser spends on a log, counted by valgrind: a measure of a parser change
that does not move with the machine's load (wall and CPU times here move by 30-50%).

    python3 bench/parse_instructions.py [--mib 4] [TREE ...]

For each checkout TREE (default: this one) it runs `Parser.match` and `Parser.apply` over
the first --mib MiB of a generated Postfix log (the same log for every tree, stamps
pinned) under `valgrind --tool=cachegrind`, once with the log and once without, and prints
the difference: the instructions of the parse alone, start-up and imports left out. Give
two trees (a `git worktree add --detach /tmp/old REV`) to compare a change with what came
before it. Needs valgrind (Debian: apt-get install valgrind).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Run in the child, under valgrind: TREE, LOG, MiB (0: start-up only).
CHILD = r"""
import sys
tree, log, mib = sys.argv[1], sys.argv[2], float(sys.argv[3])
sys.path.insert(0, tree)
from logban.parse import Clock, Parser
from logban.rules import load_rules
rules = load_rules(own_names=("mx.example.com",))
for r in rules.rules:
    r.regex.compiled()
data = open(log, "rb").read(int(mib * (1 << 20)))
data = data[:data.rfind(b"\n") + 1]
p = Parser(rules, clock=Clock("UTC", reference=1796169600.0))
start = 0
while start < len(data):
    end = data.rfind(b"\n", start, start + (1 << 20)) + 1
    p.apply(p.match(data[start:end], p.stats.lines)[0])
    start = end
"""


def instructions(tree: Path, log: Path, mib: float) -> int:
    with tempfile.NamedTemporaryFile() as out:
        r = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out.name}",
                            os.path.realpath(sys.executable), "-c", CHILD, str(tree), str(log), str(mib)],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONHASHSEED="0"))
        m = re.search(r"I\s+refs:\s+([\d,]+)", r.stderr)
        if r.returncode != 0 or not m:
            raise SystemExit(f"{tree}: valgrind failed: {r.stderr[-500:]}")
        return int(m.group(1).replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="*", type=Path, default=[HERE.parent])
    ap.add_argument("--mib", type=float, default=4.0, help="MiB of the log to parse (default 4)")
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "mail.log"
        n = int(a.mib * (1 << 20) / 100) + 1000            # a little more than --mib MiB of lines
        subprocess.run([sys.executable, str(HERE / "genlog.py"), "-n", str(n), "--seed", "7", "--offence-share", "0.1",
                        "--start", "2026-11-30T00:00:00", "-o", str(log)], check=True)
        first = None
        for tree in a.trees:
            got = instructions(tree, log, a.mib) - instructions(tree, log, 0)
            first = first or got
            print(f"{str(tree):<40} {got / 1e6:10,.0f} M instructions over {a.mib:g} MiB"
                  f"  ({got / a.mib / 1e6:,.0f} M/MiB){'' if got == first else f'  {got / first - 1:+.1%}'}", flush=True)


if __name__ == "__main__":
    main()
