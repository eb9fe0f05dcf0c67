"""Benchmark two nodes on one PostgreSQL: offences recorded per second cluster-wide, and the
time from a ban decided on one node to the other node acting on it.

    python3 bench/cluster_bench.py [--offences 100000] [--bans 200] [--db URL]

Without --db a throwaway PostgreSQL server is started (initdb and pg_ctl, as the
postgres user when run as root; Debian package: postgresql). Each node follows a
log of its own; the writer appends SASL failures from distinct IPv6 clients to both
as fast as it can (offences, no bans). Then DNSBL rejects, one at a time, go to
node A's log only; the time until node B enforces the ban (its log says so) is the
propagation. Targets (issue 6): 5,000 offences/s cluster-wide; p99 propagation < 2 s.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))


def stamp() -> str:
    return time.strftime("%b %e %H:%M:%S", time.gmtime())


class Node:
    def __init__(self, name: str, tmp: Path, url: str) -> None:
        self.log = tmp / f"{name}.log"
        self.log.write_text("")
        cfg = tmp / f"{name}.toml"
        cfg.write_text(f'[parse]\ntimezone = "UTC"\n[daemon]\npid_file = "{tmp}/{name}.pid"\n')
        self.p = subprocess.Popen([sys.executable, "-m", "logban", "-c", str(cfg), "--db", url, "--backend", "none",
                                   "run", "--follow", str(self.log), "--node", name],
                                  stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.seen: dict[str, float] = {}
        self.ready = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()
        if not self.ready.wait(60):
            raise SystemExit(f"node {name} did not start")

    def _watch(self) -> None:
        for line in self.p.stderr:
            self.tail = (getattr(self, "tail", []) + [line])[-5:]
            if "running:" in line:
                self.ready.set()
            for word in ("ban ", "enforce "):
                i = line.find(" logban: " + word)
                if i >= 0:
                    target = line[i + 9 + len(word):].split(" ", 1)[0]
                    self.seen.setdefault(target, time.perf_counter())

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(30)


def count(url: str) -> int:
    import psycopg
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql", 1)) as c:
        return c.execute("SELECT count(*) FROM offences").fetchone()[0]


def run(url: str, n: int, bans: int, tmp: Path) -> None:
    a, b = Node("mx1", tmp, url), Node("mx2", tmp, url)
    try:
        t0 = time.perf_counter()
        for node, base in ((a, 0), (b, n // 2)):
            with open(node.log, "a") as f:
                f.write("".join(f"{stamp()} mx postfix/smtpd[7]: warning: unknown[2001:db8:{(base + i) >> 16:x}:"
                                f"{(base + i) & 0xffff:x}::1]: SASL LOGIN authentication failed: UGFzc3dvcmQ6\n"
                                for i in range(n // 2)))
        while count(url) < n:
            if time.perf_counter() - t0 > 600:
                raise SystemExit("offences not recorded within 600 s")
            time.sleep(0.05)
        secs = time.perf_counter() - t0
        print(f"cluster       {n:,} offences from two nodes recorded in {secs:.2f} s: {n / secs:,.0f} offences/s "
              f"cluster-wide   (target >= 5,000/s)")
        lat = []
        for i in range(bans):
            ip = f"2001:db8:ff{i >> 16:02x}:{i & 0xffff:x}::1"
            target = f"2001:db8:ff{i >> 16:02x}:{i & 0xffff:x}::/64"
            t = time.perf_counter()
            with open(a.log, "a") as f:
                f.write(f"{stamp()} mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 "
                        f"Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; from=<a@b.example> "
                        f"to=<c@d.example> proto=ESMTP helo=<x>\n")
            canon = __import__("ipaddress").ip_network(target).compressed
            while canon not in b.seen:
                if time.perf_counter() - t > 30:
                    raise SystemExit(f"node mx2 did not act on {canon} within 30 s ; its last words: {''.join(getattr(b, 'tail', []))}")
                time.sleep(0.002)
            lat.append(b.seen[canon] - t)
        ms = sorted(x * 1000 for x in lat)
        print(f"propagation   {bans} bans decided on mx1 -> enforced by mx2: p50 {statistics.median(ms):.0f} ms, "
              f"p99 {ms[min(len(ms) - 1, int(0.99 * len(ms)))]:.0f} ms, max {ms[-1]:.0f} ms   (target p99 < 2 s)")
    finally:
        a.stop()
        b.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--offences", type=int, default=100_000)
    ap.add_argument("--bans", type=int, default=200)
    ap.add_argument("--db", help="an empty PostgreSQL database (postgresql+psycopg://...)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if a.db:
            run(a.db, a.offences, a.bans, tmp)
            return
        from pgserver import PgServer
        os.chmod(tmp, 0o755)
        pg = PgServer(tmp / "pg")
        try:
            run(pg.url, a.offences, a.bans, tmp)
        finally:
            pg.close()


if __name__ == "__main__":
    main()
