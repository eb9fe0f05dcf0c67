"""Several mail servers, one PostgreSQL: two real `logban run` nodes on a real server."""
from __future__ import annotations

import ipaddress
import time
from contextlib import contextmanager

import pytest
from daemonproc import NET, Daemon, append, dnsbl, sasl
from test_status import wait_status

from logban.firewall.nftables import set_of


@pytest.fixture
def nodes(tmp_path, pg_url):
    running: list[Daemon] = []

    def start(name: str, backend: str = "none", prefix: list[str] = (), config: str = "",
              db: str | None = None) -> tuple[Daemon, object]:
        log = tmp_path / f"{name}.log"
        log.write_text("")
        d = Daemon(tmp_path / name, "--follow", str(log), "--node", name, db=db or pg_url, backend=backend,
                   config=config)
        running.append(d)
        d.start(prefix=list(prefix))
        return d, log

    yield start
    for d in running:
        d.close()


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def test_a_slow_attack_spread_over_nodes_is_one_ban(nodes):
    a, log_a = nodes("mx1")
    b, log_b = nodes("mx2")
    ip = f"{NET}.20"
    append(log_a, sasl(ip) * 2)                 # each node alone stays under the threshold (5)
    append(log_b, sasl(ip) * 2)
    a.wait_offences(4, timeout=10)
    time.sleep(1.5)
    assert a.query("SELECT count(*) FROM bans") == [(0,)]
    append(log_a, sasl(ip))                      # the fifth, wherever it lands
    bans = wait_for(lambda: a.query("SELECT target, node, count FROM bans"), 5, "the ban")
    assert bans == [(ip, "mx1", 1)]
    nodes_seen = a.query(f"SELECT node, count(*) FROM offences WHERE ip = '{ip}' GROUP BY node ORDER BY node")
    assert nodes_seen == [("mx1", 3), ("mx2", 2)]


def test_a_ban_on_one_node_reaches_the_others_kernel(nodes, tmp_path, pg_url, pg_server):
    from netlab import Lab, need_netns, need_tools
    need_netns()
    need_tools("nft")
    lab = Lab(tmp_path / "lab")
    try:
        a, log_a = nodes("mx1")
        # mx2 runs in the lab's namespace, whose loopback is its own: it reaches the server by its socket.
        via_socket = f"{pg_url.rsplit('@', 1)[0]}@/{pg_url.rsplit('/', 1)[1]}?host={pg_server.base}&port={pg_server.port}"
        b, _ = nodes("mx2", backend="nftables", prefix=["ip", "netns", "exec", lab.srv], db=via_socket)
        assert lab.connects("198.51.100.2")
        t0 = time.monotonic()
        # 198.51.100.x: a CI host may own an address in 192.0.2.0/24 (never banned: its own)
        append(log_a, dnsbl("198.51.100.2"))         # seen by mx1 only
        held = ["nft", "list", "set", "inet", "logban", set_of("198.51.100.2")[0]]
        wait_for(lambda: "198.51.100.2" in lab.run(lab.srv, *held).stdout, 5, "mx1's ban in mx2's kernel")
        assert time.monotonic() - t0 < 5
        assert not lab.connects("198.51.100.2") and lab.connects("198.51.100.3")
        # mx2 enforces it either as mx1's ban or by counting mx1's offence itself: one ban either way.
        assert a.query("SELECT count(*) FROM bans") == [(1,)]
        # An unban anywhere lifts it everywhere.
        from conftest import run_logban
        assert run_logban("--db", a.url, "unban", "198.51.100.2").returncode == 0
        wait_for(lambda: "198.51.100.2" not in lab.run(lab.srv, *held).stdout, 5, "the unban in mx2's kernel")
        assert lab.connects("198.51.100.2")
    finally:
        lab.close()


def test_two_nodes_deciding_the_same_ban_at_once_make_one(nodes):
    a, log_a = nodes("mx1")
    b, log_b = nodes("mx2")
    for i in range(20):                          # IPv6 clients: one /64 each, no network aggregation
        ip = f"2001:db8:77:{i:x}::1"
        append(log_a, dnsbl(ip))
        append(log_b, dnsbl(ip))
    a.wait_offences(40, timeout=10)
    time.sleep(1.5)
    rows = a.query("SELECT target, count(*), max(count) FROM bans GROUP BY target ORDER BY target")
    assert sorted(rows) == sorted((str(ipaddress.ip_network(f"2001:db8:77:{i:x}::/64")), 1, 1) for i in range(20))


@contextmanager
def outage(node: Daemon, log, pg_server):
    """A node with one offence recorded, then the database away until the block ends;
    the node must live through it."""
    append(log, sasl(f"{NET}.30"))
    node.wait_offences(1, timeout=10)
    pg_server.stop()
    try:
        yield
        assert node.p.poll() is None
    finally:
        pg_server.start()


def test_the_store_going_away_loses_nothing(nodes, pg_server):
    a, log_a = nodes("mx1", config='[ban.durations]\ndnsbl = "1h"\n')
    with outage(a, log_a, pg_server):
        append(log_a, sasl(f"{NET}.31") * 3 + dnsbl(f"{NET}.32"))
        a.wait_log("store unreachable", timeout=10)
        a.wait_log(f"ban {NET}.32 dnsbl", timeout=10)         # banned on its own meanwhile
        # `logban status` tells the outage (issue 17): it reads the daemon's word, not the store.
        s = wait_status(a, lambda s: not s["store"]["reachable"])
        assert s["running"] and s["store"]["shared"] and s["store"]["outage_since"]
        assert "store unreachable" in s["last_error"]["message"]
    a.wait_log("store back", timeout=20)
    assert wait_status(a, lambda s: s["store"]["reachable"])["store"]["outage_since"] is None
    a.wait_offences(5, timeout=10)
    assert a.query("SELECT target, count FROM bans") == [(f"{NET}.32", 1)]
    append(log_a, sasl(f"{NET}.33"))
    a.wait_offences(6, timeout=10)
    assert a.query("SELECT count(*), count(DISTINCT line) FROM offences WHERE file LIKE '%mx1.log'") == [(6, 6)]


def test_a_long_outage_pauses_reading_instead_of_growing_without_end(nodes, pg_server):
    a, log_a = nodes("mx1", config="offline_buffer = 3\n")
    with outage(a, log_a, pg_server):
        append(log_a, "".join(sasl(f"{NET}.{41 + i}") for i in range(10)))
        a.wait_log("reading paused", timeout=15)
    a.wait_log("reading resumed", timeout=20)
    a.wait_offences(11, timeout=15)
    assert a.query("SELECT count(DISTINCT line) FROM offences") == [(11,)]
