"""Where the stages meet: offences from the parser are scored, and offences and
decisions go to the store in batches, one transaction each.

The scorer's state is rebuilt from the store when the engine starts (active
bans, ban history, the offences that still count), so a restart forgets nothing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import sqlalchemy as sa

from .allow import PENDING, AllowList, Resolver, valid_target
from .parse import Offence
from .score import Decision, Policy, Scorer
from .store import UNREACHABLE, Store, short_error

log = logging.getLogger("logban")

BATCH = 50_000
HISTORY_MARGIN = 1_000      # ban ids read again: ones taken before a commit that came late


@dataclass
class EngineStats:
    offences: int = 0
    bans: int = 0
    expired_on_arrival: int = 0      # decided from old log lines: recorded as already over
    released_allow: int = 0          # bans released because the allow-list now covers them
    network_bans: int = 0
    escalated: int = 0
    dropped: int = 0                 # offences the store refused to hold (logged)


class Engine:
    def __init__(self, store: Store, policy: Policy, allow: AllowList, *, node: str, dry_run: bool,
                 resolver: Resolver | None = None, batch: int = BATCH, wait_names: bool = True) -> None:
        """`wait_names=False` (the daemon): an offence that waits for its client's name is
        held, and the lines after it are scored meanwhile; `fresh()` takes it up again."""
        self.store, self.node, self.dry_run = store, node, dry_run
        self.allow = allow
        self.resolver = resolver if allow.names else None
        self.wait_names = wait_names
        self._held: dict[str, list[tuple[Offence, bool]]] = {}     # ip -> offences waiting for its name
        self.batch = batch
        self.stats = EngineStats()
        self.scorer = Scorer(policy, allow)
        self._offences: list[tuple[Offence, str]] = []
        self._pending: list[Decision] = []
        self._fresh: list[Decision] = []
        self._hist_id = 0                    # bans up to this id are in the scorer's history
        self._restore()

    def _restore(self) -> None:
        self.store.expire(time.time())
        self.release_allowed()
        sc = self.scorer
        self._hist_id = self.store.max_ban_id()
        sc.history = self.store.history()
        self.refresh_bans()
        for ip in self.store.partners(self.allow):
            sc.partner(ip)
        for r in self.store.recent_offences(sc.policy.horizon):
            sc.seed(Offence(r.time, r.ip, r.mta, r.rule, r.kind, r.score, r.file, r.line, name=r.name))

    def release_allowed(self) -> list[str]:
        """Bans of targets the allow-list covers now are released."""
        gone = [b.target for b in self.store.unreleased()
                if valid_target(b.target) and self.allow.target_allowed(b.target)]
        if gone:
            done = self.store.release(gone, "allow-list", time.time())
            self.stats.released_allow += sum(done.values())
            for t in gone:
                self.scorer.release(t)
        return gone

    def refresh_bans(self) -> None:
        """The scorer's view of the bans made equal to the store's (changed by `logban ban`/`unban`,
        another node, or at start). The history only gains the bans recorded since the last look."""
        sc = self.scorer
        got, top = self.store.history_after(max(0, self._hist_id - HISTORY_MARGIN))
        self._hist_id = max(self._hist_id, top)
        for t, p in got.items():
            old = sc.history.get(t)
            if old is None or p.created >= old.created:
                sc.history[t] = p
        # A row no logban wrote (0.0.0.0/0 would make every client look banned already) is ignored.
        live = [b for b in self.store.unreleased() if valid_target(b.target)]
        keep = {b.target for b in live}
        for t in [t for t in sc.active if t not in keep]:
            sc.release(t)
        for b in live:
            if b.target not in sc.active:
                sc.mark_banned(Decision(b.target, b.kind, b.rule, b.score, b.created, b.duration, b.count,
                                        b.escalated, b.reason))

    def reconfigure(self, policy: Policy, allow: AllowList) -> list[str]:
        """A reloaded config: new policy and allow-list, the same state."""
        self.flush()
        self.allow = allow
        self.scorer.configure(policy, allow)
        return self.release_allowed()

    def add(self, offences: list[Offence], *, record: bool = True) -> None:
        """Score offences; `record=False`: another node's, already in the store, counted here too."""
        resolver = self.resolver
        if resolver is not None and self._held:
            self.settle()
        for o in offences:
            if resolver is not None and o.name is None:
                held = self._held.get(o.ip)
                if held is not None:             # behind an offence of its own waiting for the name
                    held.append((o, record))
                    continue
                if self.scorer.would_ban(o):
                    # Only a client about to be banned costs a DNS lookup, never every line.
                    if not self.wait_names:
                        name = resolver.lookup(o.ip)
                        if name is PENDING:
                            self._held[o.ip] = [(o, record)]
                            continue
                        o.name = name
                    else:
                        o.name = resolver.names([o.ip]).get(o.ip)
            self._score(o, record)
        if len(self._offences) >= self.batch:
            self.flush()

    def settle(self) -> None:
        """Offences held for their client's name: scored once it is in (or its time is up)."""
        for ip in list(self._held):
            name = self.resolver.lookup(ip)
            if name is PENDING:
                continue
            for o, record in self._held.pop(ip):
                if o.name is None:
                    o.name = name
                self._score(o, record)

    def holding(self) -> bool:
        """Offences wait for a name: the caller should look again soon (`fresh`)."""
        return bool(self._held)

    def _score(self, o: Offence, record: bool) -> None:
        sc = self.scorer
        st = sc.stats
        before = st.allowed + st.not_target
        ds = sc.add(o)
        if record and st.allowed + st.not_target == before:
            # Allow-listed and special clients are never offenders: not recorded, not in stats.
            self._offences.append((o, sc.target_of(o.ip)[0]))
        if ds:
            self._pending.extend(ds)
            self._fresh.extend(ds)

    def has_unsaved(self) -> bool:
        return bool(self._offences or self._pending or self.scorer.new_partners)

    def unsaved(self) -> int:
        """Offences not in the store yet."""
        return len(self._offences)

    def fresh(self) -> list[Decision]:
        """Decisions made since the last call: to enforce at once, whether or not the store is reachable."""
        if self._held:
            self.settle()
        out, self._fresh = self._fresh, []
        return out

    def flush(self, positions: list[dict] = ()) -> None:
        """Offences and decisions to the store in one transaction, with the read positions
        they come up to."""
        now = time.time()
        if not self._offences and not self._pending and not self.scorer.new_partners:
            if positions:
                try:
                    self.store.save_positions(self.node, positions, now)
                except UNREACHABLE:
                    raise
                except sa.exc.StatementError as e:
                    log.error("read positions not recorded: %s", short_error(e))
            return
        sc = self.scorer
        scores = {}
        for o, t in self._offences:
            scores[t] = o.time
        scores = {t: sc.score(t, at) for t, at in scores.items()}
        try:
            self.store.record(self._offences, self._pending, node=self.node, dry_run=self.dry_run, now=now,
                              scores=scores, positions=positions, partners=sc.new_partners)
        except UNREACHABLE:
            raise
        except sa.exc.StatementError as e:
            # A row the database refuses (a value out of its range, text it cannot hold): the
            # batch goes in without it, so no single line stops the daemon, nor every restart.
            self._record_apart(e, scores, positions, now)
        sc.new_partners = []
        self.stats.offences += len(self._offences)
        self.stats.bans += len(self._pending)
        self.stats.expired_on_arrival += sum(1 for d in self._pending if d.expires is not None and d.expires <= now)
        self.stats.network_bans += sum(1 for d in self._pending if d.members)
        self.stats.escalated += sum(1 for d in self._pending if d.escalated)
        self._offences.clear()
        self._pending.clear()

    def _record_apart(self, err: Exception, scores: dict[str, float], positions: list[dict], now: float) -> None:
        """The batch in parts: offences in halves down to the one the database refuses (left
        out, logged), then the decisions with the read positions (or, refused too, without)."""
        log.error("store refused a batch (%s): recording it in parts", short_error(err))
        rec = self.store.record
        kw = {"node": self.node, "dry_run": self.dry_run, "now": now}
        dropped = 0
        parts = [self._offences]
        while parts:
            part = parts.pop()
            try:
                rec(part, [], scores={t: scores.get(t, 0.0) for _, t in part}, **kw)
            except UNREACHABLE:
                raise
            except sa.exc.StatementError as e:
                if len(part) > 1:
                    parts += [part[len(part) // 2:], part[:len(part) // 2]]
                    continue
                o = part[0][0]
                dropped += 1
                log.error("offence not recorded: %s line %d (%s): %s", o.file, o.line, o.ip, short_error(e))
        self.stats.dropped += dropped
        for pos, what in ((positions, "with"), ((), "without")):
            try:
                rec([], self._pending, positions=pos, partners=self.scorer.new_partners, **kw)
                return
            except UNREACHABLE:
                raise
            except sa.exc.StatementError as e:
                log.error("bans and read positions not recorded %s them: %s", what, short_error(e))

    def release(self, targets: list[str], reason: str) -> None:
        self.flush()
        self.store.release(targets, reason, time.time())
        for t in targets:
            self.scorer.release(t)

    def close(self, positions: list[dict] = ()) -> None:
        """Offences still waiting for a name are scored (waiting at most the lookup time) and all is recorded."""
        if self._held:
            for ip in list(self._held):
                self.resolver.names([ip])
            self.settle()
        self.flush(positions)
        if self.resolver is not None:
            self.resolver.close()
