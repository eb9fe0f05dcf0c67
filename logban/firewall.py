"""Where a decision becomes a firewall element: the kernel made to hold exactly the
active bans of the store.

The store is the truth; the kernel follows it. `Firewall.sync` lists what the
kernel holds, computes the difference to the active bans (`plan`, pure) and
applies it in one batch: one `nft -f -` transaction, one `ipset restore`, or one
libiptc commit, never one process per ban. Every element carries its remaining
ban time as a kernel timeout, so bans end on time even while logban is down;
bans longer than the kernel accepts are refreshed by later syncs. A crash between
a database commit and the kernel update is repaired by the next sync.
"""
from __future__ import annotations

import glob
import ipaddress
import json
import math
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .allow import AllowList
from .errors import FirewallError

KERNEL_TIMEOUT_MAX = 2_147_483      # seconds: ipset's maximum, used by every backend alike
# A kernel timeout off from the ban's remaining time by more than this is refreshed ...
SLACK = 10
# ... except a capped one (a ban longer than the kernel takes), refreshed once less
# than a day of the cap is left, so that periodic syncs do not rewrite it every time.
REFRESH_CAPPED = 86_400
IPTABLES_LINEAR = 5_000            # iptables rules are matched one by one: warn beyond this
ACTIONS = ("drop", "reject")
BACKENDS = ("auto", "nftables", "ipset", "iptables", "none")


@dataclass(frozen=True)
class FirewallOptions:
    backend: str = "auto"
    action: str = "drop"
    ports: tuple[int, ...] = ()     # TCP ports to close to banned clients; empty: all traffic
    forward: bool = False           # the forward hook too (a mail server in a container)


# ---- what the kernel should hold (pure) ---------------------------------------------

def kernel_timeout(expires: float | None, now: float) -> int | None:
    """Seconds an element lives in the kernel; None: no timeout (a permanent ban)."""
    if expires is None:
        return None
    return max(1, min(KERNEL_TIMEOUT_MAX, math.ceil(expires - now)))


def _key(target: str) -> tuple[int, int, int]:
    """(version, network number, prefix length) of a canonical address or CIDR."""
    addr, _, plen = target.partition("/")
    fam, bits = (socket.AF_INET6, 128) if ":" in addr else (socket.AF_INET, 32)
    num = int.from_bytes(socket.inet_pton(fam, addr), "big")
    return (6 if bits == 128 else 4), num, int(plen) if plen else bits


def wanted(bans: Iterable, now: float) -> dict[str, int | None]:
    """Kernel elements for the enforced active bans: target -> kernel timeout.

    A target inside another banned network is left out: the network drops its
    packets already, and nftables refuses overlapping intervals in one set.
    """
    want: dict[str, int | None] = {}
    for b in bans:
        if b.dry_run or (b.expires is not None and b.expires <= now):
            continue
        t = kernel_timeout(b.expires, now)
        old = want.get(b.target, 0)
        want[b.target] = None if t is None or old is None else max(t, old)
    # Cheap first (prefix lengths from the text): a family can have covered targets only
    # when one of its networks is shorter than its longest target.
    shortest = {4: 33, 6: 129}
    longest = {4: 0, 6: 0}
    for target in want:
        v = 6 if ":" in target else 4
        _, slash, pl = target.partition("/")
        plen = int(pl) if slash else (128 if v == 6 else 32)
        if slash and plen < shortest[v]:
            shortest[v] = plen
        if plen > longest[v]:
            longest[v] = plen
    check = {v for v in (4, 6) if shortest[v] < longest[v]}
    if not check:
        return want
    nets: dict[int, set[tuple[int, int]]] = {4: set(), 6: set()}       # version -> {(plen, number)}
    keys = {t: _key(t) for t in want if (6 if ":" in t else 4) in check}
    for target, (v, num, plen) in keys.items():
        if "/" in target:
            nets[v].add((plen, num))
    lens = {v: sorted({p for p, _ in s}) for v, s in nets.items()}
    for target, (v, num, plen) in keys.items():
        bits = 128 if v == 6 else 32
        for p in lens[v]:
            if p >= plen:
                break
            if (p, num >> (bits - p) << (bits - p)) in nets[v]:
                del want[target]
                break
    return want


@dataclass
class Plan:
    add: dict[str, int | None] = field(default_factory=dict)      # target -> kernel timeout
    remove: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)    # banned, not in the kernel
    unknown: list[str] = field(default_factory=list)    # in the kernel, not banned
    stale: list[str] = field(default_factory=list)      # in both, with the wrong time left

    @property
    def drift(self) -> int:
        return len(self.missing) + len(self.unknown) + len(self.stale)


def _stale(want: int | None, have: int | None) -> bool:
    if want is None or have is None:
        return want != have
    if have > want + SLACK:
        return True                 # the kernel would hold it after the ban ends
    if want >= KERNEL_TIMEOUT_MAX:
        return have < KERNEL_TIMEOUT_MAX - REFRESH_CAPPED
    return have < want - SLACK


def plan(want: Mapping[str, int | None], have: Mapping[str, int | None]) -> Plan:
    """What makes the kernel (`have`) equal the store (`want`)."""
    p = Plan()
    for t, secs in want.items():
        if t not in have:
            p.missing.append(t)
            p.add[t] = secs
        elif _stale(secs, have[t]):
            p.stale.append(t)
            p.remove.append(t)
            p.add[t] = secs
    p.unknown = [t for t in have if t not in want]
    p.remove.extend(p.unknown)
    return p


# ---- backends ------------------------------------------------------------------------

def _run(cmd: list[str], stdin: str | None = None) -> str:
    try:
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300)
    except FileNotFoundError:
        raise FirewallError(f"{cmd[0]}: command not found (install the {cmd[0]} package)") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{' '.join(cmd[:3])}: no answer in 300 s") from None
    if r.returncode != 0:
        err = next((ln for ln in r.stderr.splitlines() if "rror" in ln), None) or r.stderr.strip() or "failed"
        raise FirewallError(f"{' '.join(cmd[:3])}: {err.strip()[:300]}")
    return r.stdout


def iptables_mode() -> str | None:
    """"nf_tables" or "legacy": which kernel tables this host's `iptables` command writes."""
    if shutil.which("iptables") is None:
        return None
    try:
        out = subprocess.run(["iptables", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return "nf_tables" if "nf_tables" in out else "legacy"


def _by_family(targets: Iterable[str]) -> tuple[list[str], list[str]]:
    v4, v6 = [], []
    for t in targets:
        (v6 if ":" in t else v4).append(t)
    return v4, v6


class Backend:
    """Set up, apply a batch, list what the kernel holds, describe, tear down."""

    name = "none"
    kernel_timeouts = True

    def __init__(self, opts: FirewallOptions) -> None:
        self.opts = opts

    def setup(self) -> None:
        pass

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str]) -> None:
        pass

    def elements(self) -> dict[str, int | None]:
        """target -> kernel seconds left (None: no timeout)."""
        return {}

    def describe(self) -> dict:
        return {}

    def teardown(self) -> None:
        pass


class NoBackend(Backend):
    """Records only: decisions are kept in the store and never enforced."""


class Nftables(Backend):
    """A table of logban's own, `inet logban`: sets ban4 and ban6 (intervals, so networks
    and addresses alike, with timeouts) and a chain on the input hook that runs before
    the host's filter chains. Other tables (firewalld, ufw, docker) are not touched."""

    name = "nftables"
    TABLE = "inet logban"
    PRIORITY = "filter - 10"

    def _nft(self, script: str) -> None:
        _run(["nft", "-f", "-"], script)

    def _rules(self) -> list[str]:
        o = self.opts
        out = []
        for fam, s in (("ip", "@ban4"), ("ip6", "@ban6")):
            m = f"{fam} saddr {s}"
            if o.ports:
                m += f" tcp dport {{ {', '.join(map(str, o.ports))} }}"
                out.append(f"{m} counter {'drop' if o.action == 'drop' else 'reject with tcp reset'}")
            elif o.action == "drop":
                out.append(f"{m} counter drop")
            else:
                out += [f"{m} meta l4proto tcp counter reject with tcp reset",
                        f"{m} counter reject with icmpx admin-prohibited"]
        return out

    def _chains(self) -> set[str]:
        """logban's chains. Listing a chain or table makes nft read every set element
        first (seconds at 100,000 bans); listing the family's chains does not."""
        r = subprocess.run(["nft", "-j", "list", "chains", "inet"], capture_output=True, text=True)
        if r.returncode != 0:
            return set()
        return {o["chain"]["name"] for o in json.loads(r.stdout).get("nftables", [])
                if "chain" in o and o["chain"].get("table") == self.TABLE.split()[1]}

    def setup(self) -> None:
        t = self.TABLE
        lines = [f"add table {t}"]
        for s, typ in (("ban4", "ipv4_addr"), ("ban6", "ipv6_addr")):
            lines.append(f"add set {t} {s} {{ type {typ}; flags interval, timeout; }}")
        hooks = ["input"] + (["forward"] if self.opts.forward else [])
        for hook in hooks:
            # Flushed and written again in the same transaction: options may have changed.
            lines.append(f"add chain {t} {hook} {{ type filter hook {hook} priority {self.PRIORITY}; policy accept; }}")
            lines.append(f"flush chain {t} {hook}")
            lines += [f"add rule {t} {hook} {r}" for r in self._rules()]
        if not self.opts.forward and "forward" in self._chains():
            lines.append(f"delete chain {t} forward")
        self._nft("\n".join(lines) + "\n")

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str]) -> None:
        lines = []
        for s, ts in zip(("ban4", "ban6"), _by_family(remove)):
            if ts:
                lines.append(f"delete element {self.TABLE} {s} {{ {', '.join(ts)} }}")
        for s, ts in zip(("ban4", "ban6"), _by_family(add)):
            if ts:
                els = ", ".join(t if add[t] is None else f"{t} timeout {add[t]}s" for t in ts)
                lines.append(f"add element {self.TABLE} {s} {{ {els} }}")
        if lines:
            self._nft("\n".join(lines) + "\n")

    def _set(self, s: str) -> dict:
        try:
            out = _run(["nft", "-j", "list", "set", *self.TABLE.split(), s])
        except FirewallError as e:
            if "No such file or directory" in str(e):
                return {}           # no table (never set up, torn down, or flushed away)
            raise
        for obj in json.loads(out).get("nftables", []):
            if "set" in obj:
                return obj["set"]
        return {}

    def elements(self) -> dict[str, int | None]:
        have: dict[str, int | None] = {}
        for s in ("ban4", "ban6"):
            for e in self._set(s).get("elem", []):
                left = None
                if isinstance(e, dict) and "elem" in e:
                    left = e["elem"].get("expires")
                    e = e["elem"]["val"]
                if isinstance(e, dict) and "prefix" in e:
                    e = f"{e['prefix']['addr']}/{e['prefix']['len']}"
                have[str(e)] = left
        return have

    def describe(self) -> dict:
        present = self._chains()
        if not present:
            return {"table": f"{self.TABLE} (absent)", "sets": [], "chains": {}}
        chains = {}
        for hook in sorted(present & {"input", "forward"}):
            data = json.loads(_run(["nft", "-j", "list", "chain", *self.TABLE.split(), hook]))
            packets = sum(x["counter"]["packets"] for obj in data.get("nftables", []) if "rule" in obj
                          for x in obj["rule"]["expr"] if isinstance(x, dict) and "counter" in x)
            chains[hook] = {"priority": self.PRIORITY, "packets_blocked": packets}
        return {"table": self.TABLE, "sets": ["ban4", "ban6"], "chains": chains}

    def teardown(self) -> None:
        try:
            self._nft(f"delete table {self.TABLE}\n")
        except FirewallError as e:
            if "No such file or directory" not in str(e):
                raise


# ---- iptables hook rules (ipset and iptables backends) ----------------------------------

def _iptc():
    """python-iptables, told where the xtables extensions live (it does not look in Debian's multiarch path)."""
    if "XTABLES_LIBDIR" not in os.environ:
        for d in [*glob.glob("/usr/lib/*/xtables"), "/usr/lib/xtables", "/usr/lib64/xtables", "/lib/xtables"]:
            if os.path.isdir(d):
                os.environ["XTABLES_LIBDIR"] = d
                break
    try:
        import iptc
    except Exception as e:         # noqa: BLE001 - XTablesError and friends: one line
        raise FirewallError(f"python-iptables cannot load libiptc: {e}") from None
    return iptc


def _filter_table(v6: bool):
    """libiptc's filter table (IPv4 or IPv6), read afresh."""
    iptc = _iptc()
    t = iptc.Table6(iptc.Table6.FILTER) if v6 else iptc.Table(iptc.Table.FILTER)
    t.refresh()
    return t


class _Hooks:
    """logban's rules in the INPUT (and FORWARD) chains, marked with the comment "logban".

    Written with python-iptables where the host's iptables is legacy, and with the
    iptables commands where it is nf_tables, so `iptables -S` shows them either way.
    """

    COMMENT = "logban"

    def __init__(self, mode: str | None, chains: list[str]) -> None:
        self.mode, self.chains = mode, chains

    def specs(self, opts: FirewallOptions, v6: bool, match: list[str], jump: str) -> list[str]:
        m = list(match)
        if opts.ports:
            m += ["-p", "tcp", "-m", "multiport", "--dports", ",".join(map(str, opts.ports))]
        m += ["-m", "comment", "--comment", self.COMMENT]
        if jump == "REJECT":
            m += ["-j", "REJECT"] + (["--reject-with", "tcp-reset"] if opts.ports else [])
        else:
            m += ["-j", jump]
        return m

    def install(self, rules: dict[bool, list[str]]) -> None:
        """Exactly these rules (per family: v6 True/False) at the head of each hooked chain."""
        self.remove()
        for v6, spec in rules.items():
            for chain in self.chains:
                if self.mode == "legacy":
                    self._iptc_insert(v6, chain, spec)
                else:
                    _run(["ip6tables" if v6 else "iptables", "-w", "-I", chain, "1", *spec])

    def remove(self) -> None:
        for v6 in (False, True):
            for chain in ("INPUT", "FORWARD"):
                if self.mode == "legacy":
                    self._iptc_remove(v6, chain)
                    continue
                cmd = "ip6tables" if v6 else "iptables"
                if shutil.which(cmd) is None:
                    continue
                for line in _run([cmd, "-w", "-S", chain]).splitlines():
                    if f"--comment {self.COMMENT} " in line and line.startswith(f"-A {chain} "):
                        _run([cmd, "-w", "-D", *shlex.split(line)[1:]])

    def present(self) -> list[str]:
        out = []
        for v6 in (False, True):
            for chain in ("INPUT", "FORWARD"):
                if self.mode == "legacy":
                    t = _filter_table(v6)
                    for r in (t.is_chain(chain) and _iptc().Chain(t, chain).rules) or []:
                        if self._ours(r):
                            out.append(f"{'ip6' if v6 else 'ip'}tables-legacy {chain}: "
                                       f"{' '.join('-m ' + m.name for m in r.matches)} -j {r.target.name}")
                else:
                    cmd = "ip6tables" if v6 else "iptables"
                    if shutil.which(cmd):
                        out += [f"{cmd} {ln}" for ln in _run([cmd, "-w", "-S", chain]).splitlines()
                                if f"--comment {self.COMMENT} " in ln]
        return out

    # python-iptables: the rule is parsed from the same iptables-style words.

    def _ours(self, r) -> bool:
        return any(m.name == "comment" and m.comment == self.COMMENT for m in r.matches)

    def _iptc_insert(self, v6: bool, chain: str, spec: list[str]) -> None:
        iptc = _iptc()
        r = iptc.Rule6() if v6 else iptc.Rule()
        words = list(spec)
        while words:
            w = words.pop(0)
            if w == "-p":
                r.protocol = words.pop(0)
            elif w in ("-m", "-j"):
                ext = (r.create_match if w == "-m" else r.create_target)(words.pop(0))
                while words and words[0].startswith("--"):
                    opt, vals = words.pop(0)[2:].replace("-", "_"), []
                    while words and not words[0].startswith("-"):
                        vals.append(words.pop(0))     # --match-set takes two words
                    setattr(ext, opt, vals if len(vals) > 1 else vals[0])
        t = _filter_table(v6)
        iptc.Chain(t, chain).insert_rule(r)

    def _iptc_remove(self, v6: bool, chain: str) -> None:
        iptc = _iptc()
        t = _filter_table(v6)
        if not t.is_chain(chain):
            return
        t.autocommit = False
        c = iptc.Chain(t, chain)
        for r in [r for r in c.rules if self._ours(r)]:
            c.delete_rule(r)
        t.commit()
        t.autocommit = True


class Ipset(Backend):
    """hash:net sets logban4 and logban6 with kernel timeouts, filled by one `ipset restore`
    per batch, and one rule per family in INPUT (and FORWARD) that matches them."""

    name = "ipset"
    SETS = {False: "logban4", True: "logban6"}
    MAXELEM = 1 << 20

    def __init__(self, opts: FirewallOptions, mode: str | None = None) -> None:
        super().__init__(opts)
        self.hooks = _Hooks(mode or iptables_mode(), ["INPUT"] + (["FORWARD"] if opts.forward else []))

    def _restore(self, lines: list[str]) -> None:
        if lines:
            _run(["ipset", "restore", "-exist"], "\n".join(lines) + "\n")

    def setup(self) -> None:
        self._restore([f"create {s} hash:net family {'inet6' if v6 else 'inet'} timeout 0 maxelem {self.MAXELEM}"
                       for v6, s in self.SETS.items()])
        jump = "DROP" if self.opts.action == "drop" else "REJECT"
        self.hooks.install({v6: self.hooks.specs(self.opts, v6, ["-m", "set", "--match-set", s, "src"], jump)
                            for v6, s in self.SETS.items()})

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str]) -> None:
        # -exist: deleting what a kernel timeout already took is not an error, and an add updates the timeout.
        lines = [f"del {self.SETS[':' in t]} {t}" for t in remove]
        lines += [f"add {self.SETS[':' in t]} {t} timeout {add[t] or 0}" for t in add]
        self._restore(lines)

    def elements(self) -> dict[str, int | None]:
        have: dict[str, int | None] = {}
        for s in self.SETS.values():
            try:
                out = _run(["ipset", "save", s])
            except FirewallError as e:
                if "does not exist" in str(e):
                    continue
                raise
            for line in out.splitlines():
                w = line.split()
                if len(w) >= 3 and w[0] == "add":
                    left = int(w[w.index("timeout") + 1]) if "timeout" in w else None
                    have[w[2]] = left or None
        return have

    def describe(self) -> dict:
        return {"sets": list(self.SETS.values()), "hook_rules": self.hooks.present()}

    def teardown(self) -> None:
        self.hooks.remove()            # a set in use by a rule cannot be destroyed
        for s in self.SETS.values():
            subprocess.run(["ipset", "destroy", s], capture_output=True)


class Iptables(Backend):
    """One rule per banned target in a chain of logban's own (`logban`), through
    python-iptables, on hosts whose iptables is legacy. Rules have no kernel
    timeout: each carries its end in its comment, and syncs remove it on time."""

    name = "iptables"
    CHAIN = "logban"
    kernel_timeouts = False

    def __init__(self, opts: FirewallOptions, mode: str | None = None) -> None:
        super().__init__(opts)
        self.mode = mode or iptables_mode()
        self.hooks = _Hooks("legacy", ["INPUT"] + (["FORWARD"] if opts.forward else []))

    def _check(self) -> None:
        if self.mode == "nf_tables":
            raise FirewallError("backend iptables: this host's iptables is nf_tables, and rules written "
                                "through libiptc would not show in `iptables -S`; use backend nftables or ipset")

    def setup(self) -> None:
        self._check()
        for v6 in (False, True):
            t = _filter_table(v6)
            if not t.is_chain(self.CHAIN):
                t.create_chain(self.CHAIN)
        self.hooks.install({v6: self.hooks.specs(self.opts, v6, [], self.CHAIN) for v6 in (False, True)})


    def _rule(self, v6: bool, target: str, until: float | None):
        iptc = _iptc()
        r = iptc.Rule6() if v6 else iptc.Rule()
        r.src = target
        m = r.create_match("comment")
        m.comment = f"logban until={'never' if until is None else int(until)}"
        if self.opts.action == "drop":
            r.create_target("DROP")
        else:
            tg = r.create_target("REJECT")
            if self.opts.ports:
                tg.reject_with = "tcp-reset"
        return r

    def apply(self, add: Mapping[str, int | None], remove: Iterable[str]) -> None:
        self._check()
        iptc = _iptc()
        now = time.time()
        gone = set(remove)
        for v6 in (False, True):
            t = _filter_table(v6)
            if not t.is_chain(self.CHAIN):
                continue
            t.autocommit = False
            c = iptc.Chain(t, self.CHAIN)
            for r in c.rules if gone else ():
                if _src(r.src) in gone:
                    c.delete_rule(r)
            for target, secs in add.items():
                if (":" in target) == v6:
                    c.append_rule(self._rule(v6, target, None if secs is None else now + secs))
            t.commit()
            t.autocommit = True
            if len(c.rules) > IPTABLES_LINEAR:
                print(f"logban: warning: {len(c.rules):,} rules in {'ip6' if v6 else 'ip'}tables chain "
                      f"{self.CHAIN}: each packet walks them one by one; the nftables or ipset backend "
                      "scales better", file=sys.stderr)

    def elements(self) -> dict[str, int | None]:
        self._check()
        iptc = _iptc()
        now = time.time()
        have: dict[str, int | None] = {}
        for v6 in (False, True):
            t = _filter_table(v6)
            if not t.is_chain(self.CHAIN):
                continue
            for r in iptc.Chain(t, self.CHAIN).rules:
                until = next((m.comment.rpartition("=")[2] for m in r.matches if m.name == "comment"), "never")
                have[_src(r.src)] = None if until == "never" else max(0, int(until) - int(now))
        return have

    def describe(self) -> dict:
        return {"chain": self.CHAIN, "hook_rules": self.hooks.present()}

    def teardown(self) -> None:
        self._check()
        iptc = _iptc()
        self.hooks.remove()
        for v6 in (False, True):
            t = _filter_table(v6)
            if t.is_chain(self.CHAIN):
                iptc.Chain(t, self.CHAIN).flush()
                t.delete_chain(self.CHAIN)


def _src(src: str) -> str:
    """libiptc's "address/netmask" as the store spells the target."""
    addr, _, mask = src.partition("/")
    a = ipaddress.ip_address(addr)
    plen = int(ipaddress.ip_address(mask)).bit_count() if mask and not mask.isdigit() else int(mask or a.max_prefixlen)
    return addr if plen == a.max_prefixlen else f"{addr}/{plen}"


# ---- choosing one, and keeping it in step with the store ----------------------------------

def choose(opts: FirewallOptions, *, backend: str | None = None, dry_run: bool = False) -> Backend:
    """The backend the options name (`backend`, from --backend, over them); `auto` is what
    this host uses (none when not root)."""
    name = backend or opts.backend
    if dry_run:
        return NoBackend(opts)
    if name == "auto":
        if os.geteuid() != 0:
            return NoBackend(opts)          # a firewall needs root: decisions are recorded only
        mode = iptables_mode()
        if shutil.which("nft") or mode == "nf_tables":
            name = "nftables"
        elif mode == "legacy":
            name = "ipset" if shutil.which("ipset") else "iptables"
        else:
            return NoBackend(opts)
    return {"nftables": Nftables, "ipset": Ipset, "iptables": Iptables, "none": NoBackend}[name](opts)


class Firewall:
    """The enforcing edge: a backend kept equal to the store's active bans that this
    node's allow-list lets through (`AllowList.screen`: nothing read from the store
    reaches the kernel unchecked)."""

    ATTEMPTS = 3

    def __init__(self, backend: Backend, store, allow: AllowList | None = None) -> None:
        self.backend, self.store = backend, store
        self.allow = allow if allow is not None else AllowList()
        self.wanted: dict[str, int | None] = {}      # what the last sync put in the kernel
        self.refused: list[tuple[str, str]] = []     # store bans the last look left out: (target, why)

    @property
    def enforcing(self) -> bool:
        return not isinstance(self.backend, NoBackend)

    def want(self, now: float | None = None) -> dict[str, int | None]:
        """What the kernel should hold now: the store's enforced bans, screened."""
        at = time.time() if now is None else now
        ok, self.refused = self.allow.screen(self.store.enforced(at, names=bool(self.allow.names)),
                                             self.store.partners(self.allow))
        return wanted(ok, at)

    def diff(self, now: float | None = None, have: Mapping[str, int | None] | None = None) -> Plan:
        return plan(self.want(now), self.backend.elements() if have is None else have)

    def sync(self, now: float | None = None) -> Plan:
        """Make the kernel equal the store in one batch; returns what was different."""
        if not self.enforcing:
            self.wanted = self.want(now)
            return Plan()
        self.backend.setup()
        for attempt in range(self.ATTEMPTS):
            want = self.want(now)
            p = plan(want, self.backend.elements())
            try:
                self.backend.apply(p.add, p.remove)
                self.wanted = want
                return p
            except FirewallError:
                # A kernel timeout ran out between listing and applying (nft refuses to
                # delete what is gone): list again and retry.
                if attempt == self.ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")
