"""Benchmark `logban unban --all`: N active bans released in the store and lifted from the
kernel (nftables, in a network namespace of its own) by one command.

    python3 bench/unban_bench.py [--bans 20000] [--backend nftables|none]

Prints the command's wall time, the time `firewall sync` took to load the same bans (for
comparison: both are one kernel batch), the elements left in the kernel (0 expected) and
the command's peak RSS. Targets are IPv6 /64 networks of 2001:db8::/32 (documentation).
Run as root for the nftables backend; `--backend none` measures the store alone.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def logban(ns: str | None, db: str, backend: str, *args: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "logban", "--db", db, "--backend", backend, *args]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=600)
    took = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)}: exit {r.returncode}: {r.stderr}")
    return took, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bans", type=int, default=20_000)
    ap.add_argument("--backend", choices=("nftables", "none"), default="nftables")
    a = ap.parse_args()
    from logban.score import Decision
    from logban.store import Store
    ns = None
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{tmp}/bench.db"
        s = Store(db)
        now = time.time()
        # Apart (every other /64): adjacent networks would be merged into ranges by the interval set.
        bans = [Decision(str(ipaddress.ip_network(f"2001:db8:{i >> 15:x}:{(i & 0x7FFF) * 2:x}::/64")), "manual", "",
                         0.0, now, 3600, 1, False, "bench") for i in range(a.bans)]
        with s.write() as conn:
            s._insert_bans(conn, bans, node="bench", dry_run=False, now=now, source="manual")
        s.close()
        try:
            if a.backend == "nftables":
                ns = f"lbU{uuid.uuid4().hex[:6]}"
                subprocess.run(["ip", "netns", "add", ns], check=True)
                took, _ = logban(ns, db, a.backend, "firewall", "sync")
                print(f"firewall sync of {a.bans:,} bans: {took:.2f} s")
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            took, out = logban(ns, db, a.backend, "unban", "--all", "--json")
            rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            got = json.loads(out)
            print(f"unban --all of {got['count']:,} bans: {took:.2f} s wall, peak RSS {max(rss, before) / 1024:.0f} MB;"
                  f" {got['firewall']}")
            if ns:
                r = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "logban"],
                                   capture_output=True, text=True)
                print(f"elements left in the kernel: {r.stdout.count('2001:db8')}")
        finally:
            if ns:
                subprocess.run(["ip", "netns", "del", ns])


if __name__ == "__main__":
    main()
