"""Benchmark enforcing bans in the real kernel, inside a network namespace of its own.

    sudo python3 bench/firewall_bench.py [--size 100000] [--backends nftables,ipset,iptables] [--one-by-one 10000]

For each backend, with N active bans in the store (IPv6 /64s of the documentation prefix):
- enforce N new bans: one `Firewall.sync` pass in this process (store read, kernel
  listing, one batch), and the same after the kernel lost them (`nft flush ruleset`,
  `ipset flush`, `iptables -F`);
- then the real `logban` command line, wall time of the whole process (its start-up
  included): `ban` of one new address, `unban` of it, `unban` of an address inside one
  of the N banned networks (which lifts that network), and `firewall sync` with nothing
  to do; each the median of --repeat runs;
- `logban --help`: the start-up alone.
The targets (issue 18) are printed beside. iptables holds one rule per ban, matched one
by one: it runs at --iptables-size (10,000) bans. For comparison, fail2ban's way: one
`ipset add` / `nft add element` process per ban (--one-by-one).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"enforce": 2.0, "restore": 2.0, "ban": 0.5, "unban": 0.5, "unban-net": 0.5, "sync": 1.5}


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


def row(name: str, n: int, what: str, secs: float, cpu: float, target: str | None = None, rate: bool = False) -> None:
    """Wall time, and CPU time beside it: on a loaded machine the wall time says more
    about the neighbours than about logban."""
    goal = TARGETS.get(target or "")
    verdict = "" if goal is None else f"  target < {goal:.1f} s: {'ok' if secs < goal else 'MISSED'}"
    extra = f"  {n / secs:>9,.0f} bans/s" if rate else ""
    print(f"{name:<9} {n:>8,} {what:<40} {secs:6.2f} s wall {cpu:5.2f} s cpu{verdict}{extra}", flush=True)


def timed(fn) -> tuple[float, float]:
    """Wall and CPU time (this process and its children) of fn()."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    t0, c0 = time.perf_counter(), children_cpu() + me.ru_utime + me.ru_stime
    fn()
    me = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter() - t0, children_cpu() + me.ru_utime + me.ru_stime - c0


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cli_env(tmp: Path) -> dict:
    """The environment of the measured commands: logban byte-compiled, as an installed
    package is (pip compiles it at install), in a cache of the bench's own. Under
    PYTHONDONTWRITEBYTECODE (set on the project's machines) every run would otherwise
    compile logban's modules from source again: about 0.1 s no installed logban spends."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONPYCACHEPREFIX=str(tmp / "pycache"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "logban")], env=env, check=True)
    return env


def cli(db: Path, backend: str, *args: str, env: dict) -> tuple[float, float]:
    """Wall time and CPU time (the process and what it ran: nft, ipset) of one command,
    run from the checkout (`-m` takes the working directory's logban first)."""
    cmd = [sys.executable, "-m", "logban", "--db", f"sqlite:///{db}", "--backend", backend, *args]
    t0, c0 = time.perf_counter(), children_cpu()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    secs, cpu = time.perf_counter() - t0, children_cpu() - c0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()}")
    return secs, cpu


def backend_of(name: str):
    from logban.firewall import FirewallOptions, Ipset, Iptables, Nftables
    if name == "nftables":
        return Nftables(FirewallOptions())
    return {"ipset": Ipset, "iptables": Iptables}[name](FirewallOptions(backend=name), "legacy")


def settled(backend, n: int) -> None:
    """The kernel holds all n elements. Right after a large insert the kernel's hash set is
    still resizing in the background, and a dump taken meanwhile misses some elements (nft
    list too): wait for it, at most 10 s."""
    for _ in range(100):
        if len(backend.elements()) == n:
            return
        time.sleep(0.1)
    raise SystemExit(f"the kernel holds {len(backend.elements()):,} elements, not {n:,}")


def bench_backend(name: str, n: int, tmp: Path, repeat: int) -> None:
    from logban.firewall import Firewall
    backend = backend_of(name)
    db = tmp / f"{name}-{n}.db"
    store = make_store(db, n)
    fw = Firewall(backend, store)
    backend.teardown()
    row(name, n, "new bans enforced (in process)", *timed(fw.sync), "enforce", rate=True)
    settled(backend, n)
    flush(name)
    row(name, n, "restored after a flush (in process)", *timed(fw.sync), "restore", rate=True)
    settled(backend, n)
    store.close()
    env = cli_env(tmp)
    if name != "nftables":          # python-iptables writes the legacy tables (see DESIGN.md)
        legacy = tmp / "legacy-bin"
        legacy.mkdir(exist_ok=True)
        for cmd in ("iptables", "ip6tables"):
            if not (legacy / cmd).exists():
                (legacy / cmd).symlink_to(f"/usr/sbin/{cmd}-legacy")
        env["PATH"] = f"{legacy}:{env['PATH']}"
    times: dict[str, list[tuple[float, float]]] = {"ban": [], "unban": [], "unban-net": [], "sync": []}
    for i in range(repeat):
        times["ban"].append(cli(db, name, "ban", f"2001:db8:ffff::{i + 1:x}", env=env))
        times["unban"].append(cli(db, name, "unban", f"2001:db8:ffff::{i + 1:x}", env=env))
        # An address inside one of the n banned /64s: the unban lifts the network.
        times["unban-net"].append(cli(db, name, "unban", f"2001:db8:0:{i + 7:x}::1", env=env))
        times["sync"].append(cli(db, name, "firewall", "sync", env=env))
    assert len(backend.elements()) == n - repeat
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    row(name, n, "`logban ban ADDRESS`", *med["ban"], "ban")
    row(name, n, "`logban unban ADDRESS`", *med["unban"], "unban")
    row(name, n, "`logban unban ADDRESS` in a banned /64", *med["unban-net"], "unban-net")
    row(name, n, "`logban firewall sync`, nothing to do", *med["sync"], "sync")
    backend.teardown()


def one_by_one(name: str, n: int) -> float:
    """fail2ban's way: one process per ban."""
    b = backend_of(name)
    b.teardown()
    b.setup()
    from logban.firewall.nftables import set_of
    ts = targets(n)
    t0 = time.perf_counter()
    for t in ts:
        if name == "nftables":
            s, el = set_of(t)
            subprocess.run(["nft", "add", "element", "inet", "logban", s, f"{{ {el} timeout 86400s }}"], check=True)
        else:
            subprocess.run(["ipset", "add", "logban6", t, "timeout", "86400"], check=True)
    secs = time.perf_counter() - t0
    assert len(b.elements()) == n
    b.teardown()
    return secs


def inside(a) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        load = os.getloadavg()[0]
        print(f"load average {load:.2f} on {os.cpu_count()} cores at the start", flush=True)
        env = cli_env(tmp)
        empty = f"sqlite:///{tmp}/empty.db"
        subprocess.run([sys.executable, "-m", "logban", "--backend", "none", "--db", empty, "list"], env=env, cwd=ROOT,
                       capture_output=True, check=True)     # made first: the row is a store's start-up, not its creation
        for args in (["--help"], ["--backend", "none", "--db", empty, "unban", "192.0.2.9"]):
            runs = []
            for _ in range(5):          # the best of 5: start-up alone, the least disturbed by neighbours
                t0, c0 = time.perf_counter(), children_cpu()
                r = subprocess.run([sys.executable, "-m", "logban", *args], capture_output=True, env=env, cwd=ROOT)
                assert r.returncode == 0, r.stderr
                runs.append((time.perf_counter() - t0, children_cpu() - c0))
            row("startup", 0, f"`logban {' '.join(args[-2:] if len(args) > 1 else args)}`"
                + (" (no store)" if len(args) == 1 else " (empty store)") + ", best of 5", *min(runs))
        for name in a.backends.split(","):
            bench_backend(name, a.iptables_size if name == "iptables" else a.size, tmp, a.repeat)
        if a.one_by_one:
            n = a.one_by_one
            from logban.firewall import Firewall
            store = make_store(tmp / "one.db", n)
            for name in ("nftables", "ipset"):
                b = backend_of(name)
                b.teardown()
                batch = timed(Firewall(b, store).sync)[0]
                b.teardown()
                slow = one_by_one(name, n)
                print(f"{name:<9} {n:>8,} one process per ban  {slow:6.2f} s  {n / slow:>10,.0f} bans/s   "
                      f"logban batch {batch:.2f} s: {slow / batch:,.0f}x faster")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=100_000)
    ap.add_argument("--iptables-size", type=int, default=10_000)
    ap.add_argument("--backends", default="nftables,ipset,iptables")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each command line (the median is shown)")
    ap.add_argument("--one-by-one", type=int, default=0, help="bans for the one-process-per-ban comparison (0: skip)")
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
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside", *sys.argv[1:]])
    finally:
        subprocess.run(["ip", "netns", "del", ns])
    raise SystemExit(r.returncode)


if __name__ == "__main__":
    main()
