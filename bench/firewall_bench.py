"""Benchmark enforcing bans in the real kernel, inside a network namespace of its own.

    sudo python3 bench/firewall_bench.py [--sizes 10000,100000] [--one-by-one 10000]

For each backend: the time to enforce N new bans (a store with N active bans, one
`logban firewall sync`-style pass: store read, kernel listing, one batch), to
restore 100,000 after the kernel lost them (`nft flush ruleset`, `ipset flush`,
`iptables -F`), and a sync with nothing to do. For comparison, fail2ban's way:
one `ipset add` / `nft add element` process per ban, and the ratio.

Targets (issue 4): 100,000 bans through nftables and ipset in under 2 s each; a
restore of 100,000 in under 3 s.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def targets(n: int) -> list[str]:
    """n distinct IPv6 /64s of the documentation prefix (IPv4 has too few documentation addresses),
    spelt as logban writes them (the firewall refuses any other spelling)."""
    return [str(ipaddress.ip_network(f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::/64")) for i in range(n)]


def make_store(path: Path, n: int):
    from logban.score import Decision
    from logban.store import Store
    store = Store(f"sqlite:///{path}")
    now = time.time()
    ds = [Decision(t, "dnsbl", "bench", 5.0, now, 86400.0, 1, False, "bench") for t in targets(n)]
    with store.write() as conn:
        store._insert_bans(conn, ds, node="bench", dry_run=False, now=now, source="auto")
    return store


def flush(backend: str) -> None:
    if backend == "nftables":
        subprocess.run(["nft", "flush", "ruleset"], check=True)
    elif backend == "ipset":
        subprocess.run(["ipset", "flush"], check=True)
    else:
        for cmd in ("iptables-legacy", "ip6tables-legacy"):
            subprocess.run([cmd, "-F", "logban"], check=True)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_backend(name: str, sizes: list[int], tmp: Path) -> None:
    from logban.firewall import FirewallOptions, Firewall, Ipset, Iptables, Nftables
    legacy_cls = {"nftables": Nftables, "ipset": Ipset, "iptables": Iptables}[name]
    backend = legacy_cls(FirewallOptions(backend=name), "legacy") if name != "nftables" else legacy_cls(FirewallOptions())
    for n in sizes:
        if name == "iptables" and n > 10_000:
            print(f"{name:<9} {n:>8,} new bans: skipped (one rule per ban; linear, see --help)")
            continue
        store = make_store(tmp / f"{name}-{n}.db", n)
        fw = Firewall(backend, store)
        backend.teardown()
        secs = timed(fw.sync)
        assert len(backend.elements()) == n
        print(f"{name:<9} {n:>8,} new bans enforced   {secs:6.2f} s  {n / secs:>10,.0f} bans/s")
        if n == max(sizes):
            flush(name)
            secs = timed(fw.sync)
            assert len(backend.elements()) == n
            print(f"{name:<9} {n:>8,} restored after flush {secs:6.2f} s  {n / secs:>10,.0f} bans/s")
            secs = timed(fw.sync)
            print(f"{name:<9} {n:>8,} sync, nothing to do  {secs:6.2f} s")
        backend.teardown()


def one_by_one(name: str, n: int) -> float:
    """fail2ban's way: one process per ban."""
    from logban.firewall import FirewallOptions, Ipset, Nftables
    b = Nftables(FirewallOptions()) if name == "nftables" else Ipset(FirewallOptions(backend="ipset"), "legacy")
    b.teardown()
    b.setup()
    ts = targets(n)
    t0 = time.perf_counter()
    for t in ts:
        if name == "nftables":
            subprocess.run(["nft", "add", "element", "inet", "logban", "ban6", f"{{ {t} timeout 86400s }}"], check=True)
        else:
            subprocess.run(["ipset", "add", "logban6", t, "timeout", "86400"], check=True)
    secs = time.perf_counter() - t0
    assert len(b.elements()) == n
    b.teardown()
    return secs


def inside(a) -> None:
    sizes = [int(s) for s in a.sizes.split(",")]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in ("nftables", "ipset", "iptables"):
            bench_backend(name, sizes, tmp)
        if a.one_by_one:
            n = a.one_by_one
            from logban.firewall import Firewall, FirewallOptions, Ipset, Nftables
            store = make_store(tmp / "one.db", n)
            for name in ("nftables", "ipset"):
                b = Nftables(FirewallOptions()) if name == "nftables" else Ipset(FirewallOptions(backend="ipset"), "legacy")
                b.teardown()
                batch = timed(Firewall(b, store).sync)
                b.teardown()
                slow = one_by_one(name, n)
                print(f"{name:<9} {n:>8,} one process per ban  {slow:6.2f} s  {n / slow:>10,.0f} bans/s   "
                      f"logban batch {batch:.2f} s: {slow / batch:,.0f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--one-by-one", type=int, default=10_000, help="bans for the one-process-per-ban comparison (0: skip)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside:
        inside(a)
        return
    if os.geteuid() != 0:
        raise SystemExit("firewall_bench: needs root (it makes a network namespace of its own)")
    ns = f"lbbench{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside", "--sizes", a.sizes,
                            "--one-by-one", str(a.one_by_one)])
    finally:
        subprocess.run(["ip", "netns", "del", ns])
    raise SystemExit(r.returncode)


if __name__ == "__main__":
    main()
