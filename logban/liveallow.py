"""The live allow-list: entries kept in the store (`logban allow add`), honoured by every
node's daemon within a second, beside the config's `[allow]`.

An entry is an address, a network, or a host name pattern matched, as the config's
patterns are, only against a name somebody verified (the MTA's forward-confirmed name,
or logban's own FCrDNS lookup): never against HELO text or a name the client claimed.

Whoever may write to the store may switch logban off with one entry, so the entries
that would do it by mistake are refused: `0.0.0.0/0` and `::/0` always (stop logban or
use `dry_run` instead), a network of a /8 or wider (IPv6 /32 or wider) unless `--force`,
and a name pattern whose last two labels are not spelled out (`*.com`, `*.example`,
`mail.*`): an attacker controls the reverse and forward zones of a domain of their own,
so a pattern that reaches into a whole top-level domain allows them too.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .allow import AllowList, check_name_pattern, parse_network, valid_target
from .config import Config

WIDE = {4: 8, 6: 32}
_ADDRESSY = re.compile(r"[0-9A-Fa-f:./]+")      # meant as an address or network, not a name        # as `logban ban`: a network this wide needs --force


@dataclass(frozen=True)
class Entry:
    target: str             # canonical address or network, or a lower-case name pattern
    kind: str               # address, network or name
    reason: str = ""
    created: float = 0.0
    expires: float | None = None
    added_by: str = ""


def parse_entry(text: str, *, force: bool = False) -> tuple[str, str]:
    """(canonical target, kind) of a `logban allow` TARGET, or ValueError saying what is wrong."""
    t = text.strip()
    try:
        net = parse_network(t)
    except ValueError as e:
        if _ADDRESSY.fullmatch(t) and any(c.isdigit() or c == ":" for c in t):
            hint = ""
            if "host bits" in str(e):
                hint = f" (the network is {parse_network(t, strict=False)})"
            raise ValueError(f"{text!r} is not an address or network: {e}{hint}") from None
        return _name_pattern(t), "name"
    if net.prefixlen == 0:
        raise ValueError(f"{net} allows every client, which switches logban off: refused "
                         "(stop logban, or set dry_run = true, instead)")
    if net.prefixlen <= WIDE[net.version] and not force:
        raise ValueError(f"{net} holds {net.num_addresses:,} addresses; --force allows a "
                         f"/{WIDE[net.version]} or wider")
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address), "address"
    return str(net), "network"


def _name_pattern(text: str) -> str:
    p = check_name_pattern(text)
    labels = p.split(".")
    if not all(map(_literal, labels)) and (len(labels) < 3 or not all(map(_literal, labels[-2:]))):
        raise ValueError(f"{text!r}: a name pattern must spell out at least its last two labels "
                         "(like *.partner.example): a wildcard there would also allow names an attacker can give "
                         "their own hosts")
    return p


def _literal(label: str) -> bool:
    return bool(label) and "*" not in label and "?" not in label


def entries_in_force(rows, now: float) -> tuple[Entry, ...]:
    """The store's rows still in force, as entries; rows no logban wrote are left out."""
    out = []
    for r in rows:
        if r.expires is not None and not r.expires > now:
            continue
        try:
            target, kind = parse_entry(r.target, force=True)
        except ValueError:
            continue            # a row someone wrote by hand that `allow add` would refuse
        out.append(Entry(target, kind, r.reason or "", r.created or 0.0, r.expires, r.added_by or ""))
    return tuple(out)


def merged(cfg: Config, entries: tuple[Entry, ...]) -> AllowList:
    """The config's allow-list with the live entries."""
    nets = [e.target for e in entries if e.kind != "name"]
    names = [e.target for e in entries if e.kind == "name"]
    return AllowList((*cfg.allow.addresses, *nets), (*cfg.allow.hostnames, *names), big=cfg.big_senders)


def load(cfg: Config, store) -> AllowList:
    """For a command: the config's allow-list and the store's live one, as they are now."""
    return merged(cfg, entries_in_force(store.allow_entries(time.time()), time.time()))


class Live:
    """The daemon's view of the live allow-list: `refresh` says when the entries in force
    changed (one added or removed on any node, one whose time ran out), and again at each
    look until the daemon says it honoured them (`done`): a change half applied when the
    store went away is applied again."""

    def __init__(self) -> None:
        self.entries: tuple[Entry, ...] = ()
        self.pending = False

    def refresh(self, store, now: float) -> bool:
        got = entries_in_force(store.allow_entries(now), now)
        if {(e.target, e.expires) for e in got} != {(e.target, e.expires) for e in self.entries}:
            self.entries, self.pending = got, True
        return self.pending

    def done(self) -> None:
        self.pending = False

    def allow(self, cfg: Config) -> AllowList:
        return merged(cfg, self.entries)


def newly_allowed(allow: AllowList, active_bans) -> list[str]:
    """Of the active bans (rows with `target` and the client's verified `name`), the targets
    the allow-list now covers, by address or network or by the verified name."""
    out = []
    for b in active_bans:
        if not valid_target(b.target):
            continue
        if allow.target_allowed(b.target) or ("/" not in b.target and allow.name_allowed(b.name)):
            out.append(b.target)
    return sorted(dict.fromkeys(out))
