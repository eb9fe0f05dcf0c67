"""Two network namespaces joined by a veth pair, for testing bans with real packets.

The server namespace listens on TCP port 25 and runs logban; the client namespace
connects from documentation addresses. Nothing outside the two namespaces is
touched, and `close` removes both.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# The server's own networks are apart from the clients': logban never bans its host's
# own addresses, nor a network that holds one.
SERVER = {"203.0.113.1/24", "2001:db8:ff::1/64"}
CLIENT = {"192.0.2.2/32", "192.0.2.3/32", "198.51.100.2/32", "198.51.100.3/32",
          "2001:db8:1::2/128", "2001:db8:2::2/128", "2001:db8:2::3/128"}
IP = shutil.which("ip") or "ip"     # by path: a test may give logban a PATH of its own
OTHER_PORT = 2525       # a second listener, for `firewall.ports`: not a mail port logban guards
ROUTES = {"server": ("192.0.2.0/24", "198.51.100.0/24", "2001:db8:1::/64", "2001:db8:2::/64"),
          "client": ("203.0.113.0/24", "2001:db8:ff::/64")}
# A host behind the server (`Lab.add_behind`), which the server routes to: what the client
# sends there crosses the server's forward hook. The server's end of that link, and the host.
BEHIND = {4: ("10.99.0.1", "10.99.0.2"), 6: ("fd00:99::1", "fd00:99::2")}


def need_netns() -> None:
    """Skip (fail under CI=true) where namespaces cannot be made."""
    why = None
    if os.geteuid() != 0:
        why = "needs root to create network namespaces"
    elif not shutil.which("ip"):
        why = "needs iproute2 (ip)"
    elif not Path("/proc/self/ns/net").exists():
        why = "kernel without network namespaces"
    if why:
        skip_or_fail(why)


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        skip_or_fail(f"needs {', '.join(missing)} (Debian: iptables ipset nftables)")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def in_netns(name: str, fn):
    """fn() run in a thread that has entered namespace `name`; a socket made there stays there."""
    out: dict = {}

    def run() -> None:
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            out["value"] = fn()
        except BaseException as e:
            out["error"] = e
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


class Lab:
    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.srv, self.cli = f"lbS{tag}", f"lbC{tag}"
        self.tmp = tmp
        self.behind: str | None = None
        self.listeners: list[socket.socket] = []
        ip("netns", "add", self.srv)
        ip("netns", "add", self.cli)
        try:
            ip("-n", self.srv, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns", self.cli)
            for ns, dev, addrs in ((self.srv, "vs", SERVER), (self.cli, "vc", CLIENT)):
                for a in sorted(addrs):
                    ip("-n", ns, "addr", "add", a, "dev", dev, *(["nodad"] if ":" in a else []))
                ip("-n", ns, "link", "set", "lo", "up")
                ip("-n", ns, "link", "set", dev, "up")
                for net in ROUTES["server" if ns == self.srv else "client"]:
                    ip("-n", ns, "route", "add", net, "dev", dev)
            self._listen()
            self._warm()
            self.legacy_bin = tmp / "legacy-bin"         # a host whose iptables is legacy
            self.legacy_bin.mkdir(parents=True, exist_ok=True)
            for cmd in ("iptables", "ip6tables"):
                real = shutil.which(f"{cmd}-legacy")
                if real and not (self.legacy_bin / cmd).exists():
                    (self.legacy_bin / cmd).symlink_to(real)
        except BaseException:
            self.close()
            raise

    def _listen(self, ns: str | None = None) -> None:
        """The listeners of the server (or of namespace `ns`): the mail port 25 and OTHER_PORT,
        a port that `firewall.ports` leaves open."""
        def make(port: int):
            def sock() -> socket.socket:
                s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("::", port))
                s.listen(512)
                return s
            return sock
        new = [in_netns(ns or self.srv, make(port)) for port in (25, OTHER_PORT)]
        self.listeners += new
        self.listener = self.listeners[0]

        def serve(listener) -> None:
            while True:
                try:
                    c, _ = listener.accept()
                except OSError:
                    return
                c.close()
        for listener in new:
            threading.Thread(target=serve, args=(listener,), daemon=True).start()

    def _warm(self, srcs: list[str] | None = None, behind: bool = False) -> None:
        """Wait until every client address (or `srcs`) reaches the server (or the host
        behind it): the first SYNs of a fresh link can be lost while neighbour discovery runs."""
        srcs = srcs or [a.split("/")[0] for a in sorted(CLIENT)]
        deadline = time.monotonic() + 15
        while not all(self.reachable(*srcs, behind=behind).values()):
            if time.monotonic() > deadline:
                raise RuntimeError("the namespaces' veth link did not come up within 15 s")
            time.sleep(0.2)

    def add_clients(self, *addrs: str) -> None:
        """More client addresses, each routed from the server (and from the host behind it,
        through the server); reachable when this returns."""
        for a in addrs:
            ip("-n", self.cli, "addr", "add", f"{a}/{128 if ':' in a else 32}", "dev", "vc", *(["nodad"] if ":" in a else []))
            ip("-n", self.srv, "route", "add", a, "dev", "vs")
        self._warm(list(addrs))
        if self.behind:
            self._warm(list(addrs), behind=True)

    def add_behind(self) -> None:
        """A host behind the server (BEHIND), listening as the server does, with the server
        forwarding between it and the client: a mail server in a container."""
        self.behind = f"lbB{self.srv[3:]}"
        ip("netns", "add", self.behind)
        ip("-n", self.srv, "link", "add", "vb", "type", "veth", "peer", "name", "vh", "netns", self.behind)
        for dev in ("lo", "vh"):
            ip("-n", self.behind, "link", "set", dev, "up")
        ip("-n", self.srv, "link", "set", "vb", "up")
        for v, (gw, host) in BEHIND.items():
            plen = 64 if v == 6 else 24
            ip("-n", self.srv, "addr", "add", f"{gw}/{plen}", "dev", "vb", *(["nodad"] if v == 6 else []))
            ip("-n", self.behind, "addr", "add", f"{host}/{plen}", "dev", "vh", *(["nodad"] if v == 6 else []))
            ip("-n", self.behind, "route", "add", "default", "via", gw)
            ip("-n", self.cli, "route", "add", host, "via", "2001:db8:ff::1" if v == 6 else "203.0.113.1")
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            subprocess.run([IP, "netns", "exec", self.srv, "sysctl", "-qw", f"{key}=1"], check=True, capture_output=True)
        self._listen(self.behind)
        self._warm(behind=True)

    def connects(self, src: str, timeout: float = 0.6, port: int = 25, behind: bool = False) -> bool:
        """Whether a TCP connection from client address `src` to the server's `port` (or to
        the host behind it, through the server) succeeds."""
        dst = BEHIND[6 if ":" in src else 4][1] if behind else "2001:db8:ff::1" if ":" in src else "203.0.113.1"

        def make() -> socket.socket:
            return socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_STREAM)
        s = in_netns(self.cli, make)
        try:
            s.settimeout(timeout)
            s.bind((src, 0))
            s.connect((dst, port))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def reachable(self, *srcs: str, behind: bool = False, port: int = 25) -> dict[str, bool]:
        with ThreadPoolExecutor(len(srcs)) as ex:
            return dict(zip(srcs, ex.map(lambda s: self.connects(s, port=port, behind=behind), srcs)))

    def run(self, ns: str, *cmd: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([IP, "netns", "exec", ns, *cmd], capture_output=True, text=True,
                              timeout=timeout, env=env)

    def env(self, legacy: bool = False) -> dict:
        e = dict(os.environ, PYTHONPATH=str(ROOT))
        if legacy:
            e["PATH"] = f"{self.legacy_bin}:{e['PATH']}"
        return e

    def logban_cmd(self, db: str, backend: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "logban", "--db", db, "--backend", backend, *args]

    def close(self) -> None:
        for listener in getattr(self, "listeners", ()):
            listener.close()
        for ns in (self.srv, self.cli, self.behind):
            if ns:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
