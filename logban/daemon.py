"""`logban run`: follow the logs, decide, record and enforce, for months.

One loop: wait for the logs (inotify, or polling), read what is new, parse and
score it, commit offences, bans and read positions in one transaction, then put
the new bans in the kernel. Expiry runs on a timer set to the next ban's end; a
full firewall reconcile runs at start and every `daemon.sync_interval`. SIGTERM
and SIGINT stop cleanly (the firewall keeps its bans while logban restarts);
SIGHUP reloads the config and rule packs and keeps all state, or keeps the old
config when the new one is wrong. systemd: Type=notify, READY=1, STATUS=,
WATCHDOG=1.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .allow import Resolver
from .config import Config, load_config
from .engine import Engine
from .errors import ExportError, FirewallError, UsageError
from .export import SYSTEMD_HINT, unwritable_exports
from .firewall import Firewall, choose, kernel_timeout
from .follow import Follower, Spec
from .journal import JournalSpec, journal_if_missing
from .liveallow import Live, newly_allowed
from .parse import Clock, Offence, Parser
from .pidfile import default_pid_file, write_pid
from .report import safe
from .rules import RuleSet, check_config_references, load_rules
from .score import Decision
from .status import Publisher, status_path
from .store import NOTIFY_CHANNEL, UNREACHABLE, Store, short_error
from .units import format_duration

log = logging.getLogger("logban")

CLUSTER_EVERY = 1.0         # seconds between looks at what others wrote (LISTEN/NOTIFY makes it sooner)
RETRY_EVERY = 2.0           # seconds between attempts to reach a store that went away
REMOTE_MARGIN = 10_000      # offence ids looked at again: ones taken before a commit that came late
TRIGGER_MAX = 200           # characters of the deciding log line in the ban's log line
EXPORT_EVERY = 2.0          # seconds at least between rewrites of the [[export]] files
EXPORT_BACKOFF_MAX = 300.0  # a failing export is retried after 2 s, 4 s, ... at most this
PRUNE_EVERY = 3600.0        # seconds between forgetting offences older than store.retention


def sd_notify(msg: str) -> None:
    """Tell systemd (Type=notify) how we are; nothing when not run by systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(msg.encode())
    except OSError as e:
        log.warning("sd_notify: %s", e)


class Listener:
    """LISTEN on the shared PostgreSQL store in a thread: a NOTIFY (a ban, an unban, offences
    on another node) sets `changed`. If it cannot listen, the loop's polling still works."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.changed = threading.Event()
        # The main loop sleeps in select(): a byte on this pipe wakes it at once.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="logban-listen", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psycopg
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._signal()                  # anything missed while not listening
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self._signal()
            except psycopg.Error:
                self._stop.wait(2.0)

    def _signal(self) -> None:
        self.changed.set()
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:
            pass                        # the pipe is full: the loop is awake anyway

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Options:
    """What the command line adds to the config."""
    config_path: Path | None
    db: str | None
    backend: str | None
    node: str
    dry_run: bool
    follow: list[Path]
    journals: list[JournalSpec] = field(default_factory=list)     # --journal, --journal-dir


class Metrics:
    """Prometheus metrics (prometheus-client), served on loopback when `daemon.metrics` is set."""

    def __init__(self, where: str) -> None:
        try:
            import prometheus_client as pc
        except ImportError:
            raise UsageError("daemon.metrics needs prometheus-client (pip install 'logban[metrics]')") from None
        host, _, port = where.rpartition(":")
        self.registry = reg = pc.CollectorRegistry()
        self.lines = pc.Counter("logban_lines", "Log lines read", ["file"], registry=reg)
        self.offences = pc.Counter("logban_offences", "Offences found", ["kind"], registry=reg)
        self.bans_added = pc.Counter("logban_bans_added", "Bans decided", ["kind"], registry=reg)
        self.bans_released = pc.Counter("logban_bans_released", "Bans released", ["reason"], registry=reg)
        self.bans_active = pc.Gauge("logban_bans_active", "Bans in force", registry=reg)
        self.parse_failures = pc.Counter("logban_parse_failures", "Candidate lines without a readable header "
                                         "or client address, and rule timeouts", registry=reg)
        self.failures_seen = 0
        self.lag = pc.Gauge("logban_follow_lag_bytes", "Bytes written to a followed file and not read yet",
                            ["file"], registry=reg)
        self.store_up = pc.Gauge("logban_store_up", "1 while the store answers, 0 during an outage", registry=reg)
        self.store_up.set(1)
        self.store_outages = pc.Counter("logban_store_outages", "Times the store became unreachable", registry=reg)
        self.lag_seconds = pc.Gauge("logban_follow_lag_seconds", "How far behind the newest entry read from a "
                                    "followed journal is, while more are waiting", ["file"], registry=reg)
        self.server, self.thread = pc.start_http_server(int(port), addr=host.strip("[]"), registry=reg)


class SafeFormatter(logging.Formatter):
    """The daemon's log carries text attackers wrote (the line that decided a ban, rows of
    the store): each record is one line with control characters escaped, so it can
    neither drive the admin's terminal nor forge a line of its own in the journal."""

    def format(self, record: logging.LogRecord) -> str:
        return safe(super().format(record))


class Daemon:
    def __init__(self, cfg: Config, opts: Options) -> None:
        self.opts = opts
        self.stopping = False
        self.reload_wanted = False
        self.metrics: Metrics | None = None
        self.offline_since: float | None = None
        self.retry_at = 0.0
        self.paused = False
        # What this process enforces (the kernel holds it unless the backend is none): target -> end.
        self.kernel: dict[str, float] = {}
        self.remote_seen: set[int] = set()
        self.refused_seen: set[str] = set()     # store bans this node refused to enforce (logged once)
        self.next_expiry: float | None = None
        self.exports_dirty = True           # the ban set may have changed: [[export]] files to check
        self.export_delay = EXPORT_EVERY    # doubled after each failed export, back to EXPORT_EVERY after one that works
        self.export_failing: dict[str, str] = {}    # path -> the error logged for it (logged once per change)
        self.future_told, self.future_next = 0, 0.0
        self.live = Live()                  # the store's allow-list, read each second (liveallow.py)
        self._configure(cfg)

    # ---- configuration (start and SIGHUP) ------------------------------------------------------
    def _configure(self, cfg: Config) -> None:
        """Everything derived from the config; raises UsageError before changing anything."""
        rules = load_rules(cfg.rule_dirs, disable=cfg.disable, own_names=cfg.parse.own_names,
                           disable_key=f"{cfg.path or 'config'}: rules.disable").compile_all()
        check_config_references(cfg, rules)
        files, instead = journal_if_missing(cfg.daemon.follow, cfg.daemon.journal_if_missing, log.info)
        specs = [Spec(p, mta) for p, mta in files] + [Spec(p) for p in self.opts.follow]
        journals = list(dict.fromkeys(cfg.daemon.journals + instead + self.opts.journals))
        if not specs and not journals:
            raise UsageError("nothing to follow: give --follow PATH, --journal or [[follow]] path = ... in the config")
        parsers = {mta: self._parser(cfg, rules, mta, self._rate_key) for mta in {s.mta for s in specs + journals}}
        for mta, p in parsers.items():
            if mta in getattr(self, "parsers", {}):
                p.adopt(self.parsers[mta])      # a reload keeps sessions, links and rate windows
        self.parsers = parsers
        self.cfg, self.rules, self.specs, self.journals = cfg, rules, specs, journals
        self.allow = self.live.allow(cfg)
        for o, why in unwritable_exports(cfg.exports):     # at start and at each reload
            log.warning("export %s to %s: this daemon cannot write it (%s)%s", o.format, o.path, why, SYSTEMD_HINT)

    @staticmethod
    def _parser(cfg: Config, rules: RuleSet, mta: str | None, rate_key) -> Parser:
        if mta is not None:
            rules = load_rules(cfg.rule_dirs, disable=cfg.disable, own_names=cfg.parse.own_names,
                               only_packs=(mta,)).compile_all()
        return Parser(rules, clock=Clock(cfg.parse.timezone), max_line=cfg.parse.max_line,
                      match_timeout=cfg.parse.match_timeout, any_program=mta is not None,
                      rate_key=rate_key)

    def _rate_key(self, ip: str, name: str | None, t: float) -> str | None:
        """Rate rules count per the engine's scoring target (it runs before any line is read)."""
        return self.engine.scorer.rate_key(ip, name, t)

    @property
    def dry_run(self) -> bool:
        return self.cfg.dry_run or self.opts.dry_run

    def _firewall(self) -> Firewall:
        return Firewall(choose(self.cfg.firewall, backend=self.opts.backend), self.store, self.allow,
                        dry_run=self.dry_run)

    def _screen(self, bans, partners: list[str] | None = None) -> list:
        """The bans this node may enforce and publish; each refusal logged once. `partners`:
        as read from the store (None: as last read; deciding needs no database)."""
        ok, refused = self.allow.screen(bans, partners)
        self._note_refused(refused)
        return ok

    def _note_refused(self, refused: list[tuple[str, str]]) -> None:
        for target, why in refused:
            if target not in self.refused_seen:
                if len(self.refused_seen) > 100_000:
                    self.refused_seen.clear()
                self.refused_seen.add(target)
                log.warning("not enforced here: ban of %r: %s", target, why)

    # ---- running ----------------------------------------------------------------------------
    def run(self) -> int:
        self.store = Store(self.opts.db or self.cfg.database)
        try:
            lock = self.store.run_lock(self.opts.node)
        except BaseException:
            self.store.close()
            raise
        try:
            return self._run()
        finally:
            lock.release()

    def _run(self) -> int:
        c = self.cfg
        resolver = Resolver(c.allow.resolve_timeout) if c.allow.resolve else None
        if self.live.refresh(self.store, time.time()):
            self.allow = self.live.allow(c)
            self.live.done()
        self.engine = Engine(self.store, c.policy, self.allow, node=self.opts.node, dry_run=self.dry_run,
                             resolver=resolver, batch=1 << 62,      # flushed by the loop, with positions
                             clock_skew=c.parse.clock_skew, future="now",
                             wait_names=False)                      # DNS never holds up the loop
        self.remote_low = self.store.max_offence_id()           # other nodes' offences: from here on
        self.firewall = self._firewall()
        if self.live.entries:
            self._release_allowed()
        self._sync("start")
        self.follower = self._follower()
        self.metrics = Metrics(c.daemon.metrics) if c.daemon.metrics else None
        self.listener = Listener(self.store.listen_dsn()) if self.store.shared else None
        pid_file = c.daemon.pid_file or default_pid_file()
        self._write_pid(pid_file)
        self.status = Publisher(status_path(pid_file), self)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        watchdog = int(os.environ.get("WATCHDOG_USEC", "0")) / 1e6
        # What is alive once the daemon is up goes to the permanent generation: the cyclic
        # collector does not walk it again at each full collection (on a store with a million
        # past bans, stalls of 150-500 ms in the loop, bench/daemon_bench.py --past 1000000).
        gc.collect()
        gc.freeze()
        log.info("running: following %s (%s), firewall %s%s, store %s%s",
                 ", ".join([str(s.path) for s in self.specs] + [j.name for j in self.journals]), self.follower.mode,
                 self.firewall.backend.name,
                 " (dry run)" if self.dry_run else "", self.store.where(self.store.url),
                 f" shared as node {self.opts.node}" if self.store.shared else "")
        sd_notify("READY=1\nSTATUS=" + self._status())
        self.next_expiry = self.store.next_expiry()
        mono = time.monotonic()
        next_sync, next_cluster, next_ping = mono + c.daemon.sync_interval, mono + CLUSTER_EVERY, 0.0
        next_prune = next_export = mono
        self.store.watch_revision()             # this process's own ban changes move it on
        self.cleared_mark = time.time() - 2
        try:
            while not self.stopping:
                ne = self.next_expiry
                wait = 1.0 if ne is None else min(1.0, max(0.0, ne - time.time()))
                if self.engine.holding():
                    wait = min(wait, 0.05)      # offences wait for a client's name: look again soon
                self.follower.wait(wait, self.listener.wake_r if self.listener is not None else None)
                got = self._read() if self._may_read() else False
                fresh = self.engine.fresh()
                if fresh and self.offline_since is not None:
                    self._enforce(fresh)        # the store is away: the kernel needs no database
                    fresh = []
                if got or fresh or self.engine.has_unsaved():
                    self._guard(lambda: self.engine.flush(self.follower.positions()))
                if fresh:
                    # Recorded first, then enforced: a `logban firewall sync` run meanwhile
                    # finds the ban in the store and cannot take it for an unknown element.
                    self._enforce(fresh)
                if self.next_expiry is not None and time.time() >= self.next_expiry:
                    self._guard(self._expire)
                mono = time.monotonic()
                notified = self.listener is not None and self.listener.changed.is_set()
                if notified or mono >= next_cluster:
                    if notified:
                        self.listener.changed.clear()
                    next_cluster = mono + CLUSTER_EVERY
                    self._guard(self._follow_store)
                if mono >= next_sync:
                    next_sync = mono + self.cfg.daemon.sync_interval
                    self._sync("periodic")
                if mono >= next_prune:
                    self._guard(self._prune)
                    # A backlog of released bans (an upgrade) goes a chunk a second, between lines.
                    next_prune = mono + (1.0 if self.store.prune_more else PRUNE_EVERY)
                if self.reload_wanted:
                    self.reload_wanted = False
                    self._guard(self._reload)
                if self.exports_dirty and mono >= next_export:
                    self._guard(self._export)
                    next_export = mono + self.export_delay
                if watchdog and mono >= next_ping:
                    next_ping = mono + watchdog / 2
                    sd_notify("WATCHDOG=1\nSTATUS=" + self._status())
                self.status.tick()
        finally:
            sd_notify("STOPPING=1")
            try:
                self.engine.close(self.follower.positions())
            except UNREACHABLE as e:
                log.error("stopping without the store (%s): %d offences and %d bans not recorded; "
                          "their lines are read again at the next start", short_error(e),
                          len(self.engine._offences), len(self.engine._pending))
            self.follower.close()
            self.store.close()
            if self.listener is not None:
                self.listener.stop()
            self.status.stopped()
            pid_file.unlink(missing_ok=True)
            if self.metrics is not None:
                self.metrics.server.shutdown()
            log.info("stopped; the firewall keeps its bans")
        return 0

    # ---- the store, and when it is away -----------------------------------------------------
    def _guard(self, fn) -> None:
        """Run a step that needs the store. Without the store logban goes on: it keeps
        enforcing, scoring and banning, and keeps what it must record until the store is back."""
        if self.offline_since is not None and time.monotonic() < self.retry_at:
            return                      # away: asked again every RETRY_EVERY seconds, not at every step
        try:
            fn()
        except UNREACHABLE as e:
            self.retry_at = time.monotonic() + RETRY_EVERY
            if self.offline_since is None:
                self.offline_since = time.monotonic()
                if self.metrics is not None:
                    self.metrics.store_up.set(0)
                    self.metrics.store_outages.inc()
                log.error("store unreachable (%s): enforcing and banning on our own, keeping what is "
                          "to be recorded until it is back", short_error(e))
            return
        if self.offline_since is not None:
            down = time.monotonic() - self.offline_since
            self.offline_since = None
            if self.metrics is not None:
                self.metrics.store_up.set(1)
            log.warning("store back after %s; what was kept is recorded; resynchronising",
                        format_duration(max(1.0, round(down))))
            self._guard(self._resync)

    def _may_read(self) -> bool:
        """While the store is away what is read is kept in memory; past daemon.offline_buffer
        offences (checked between reads) reading pauses, and the lines wait in the log files,
        where nothing is lost."""
        full = self.offline_since is not None and self.engine.unsaved() >= self.cfg.daemon.offline_buffer
        if full != self.paused:
            self.paused = full
            if full:
                log.warning("store still away and %d offences kept: reading paused until it is back",
                            self.engine.unsaved())
            else:
                log.info("reading resumed")
        return not full

    def _resync(self) -> None:
        self.engine.flush(self.follower.positions())
        self.engine.refresh_bans()
        self.next_expiry = self.store.next_expiry()
        self._sync("resync")
        self.exports_dirty = True

    def _prune(self) -> None:
        now = time.time()
        gone = self.store.prune(now, self.cfg.retention, self.cfg.policy.lookback, chunks=1)
        self.engine.scorer.forget(now)
        if gone:
            log.info("forgot %d offences older than %s", gone, format_duration(self.cfg.retention))

    def _follow_store(self) -> None:
        """What others wrote: other nodes' offences count here too; bans and unbans made
        elsewhere (another node, `logban ban`/`unban`) reach this kernel."""
        if self.live.refresh(self.store, time.time()):
            self._allow_changed()
        rows = self.store.offences_after(self.remote_low, self.opts.node)
        if rows:
            offs = []
            for r in rows:
                if r.id in self.remote_seen:
                    continue
                self.remote_seen.add(r.id)
                offs.append(Offence(r.time, r.ip, r.mta, r.rule, r.kind, r.score, r.file, r.line,
                                    r.text.encode("utf-8", "replace"), r.name))
            # Ids are handed out before commit: a slow writer can commit a lower one later.
            top = rows[-1].id
            self.remote_low = max(self.remote_low, top - REMOTE_MARGIN)
            self.remote_seen = {i for i in self.remote_seen if i > self.remote_low}
            if offs:
                self.engine.add(offs, record=False)
                fresh = self.engine.fresh()
                if fresh:
                    self.engine.flush(self.follower.positions())
                    self._enforce(fresh)
        self._cleared()
        r = self.store.revision()
        if r == self.store.revision_known:
            return                      # nothing changed, or only what this process did itself
        self.store.revision_known = r
        before = set(self.engine.scorer.active)
        self.engine.refresh_bans()
        self.next_expiry = self.store.next_expiry()
        self.exports_dirty = True
        now = time.time()
        want = self.firewall.want(now)
        self._note_refused(self.firewall.refused)
        # Elements whose time is up are gone from the kernel by their own timeout.
        self.kernel = {t: e for t, e in self.kernel.items() if e > now + 1}
        add = {t: secs for t, secs in want.items() if t not in self.kernel} if self.firewall.enforcing else {}
        remove = [t for t in self.kernel if t not in want]
        gone = sorted((before - set(self.engine.scorer.active)) | set(remove))
        if (add or remove) and not self._apply(add, remove, now):
            return
        for t in add:
            log.info("enforce %s (banned elsewhere)", t)
        if not self.firewall.enforcing:
            for t in sorted(set(self.engine.scorer.active) - before):
                log.info("enforce %s (banned elsewhere): not, %s", t,
                         "dry run" if self.firewall.dry_run else "backend none")
        if gone:
            why = self.store.release_reasons(gone)
            for t in gone:
                log.info("release %s (%s, elsewhere)", t, why.get(t) or "released")
            if self.metrics is not None:
                for t in gone:
                    self.metrics.bans_released.labels(why.get(t) or "released").inc()
        self._gauge()

    def _allow_changed(self) -> None:
        """The live allow-list changed (an entry added or removed on any node, or its time
        over): honoured at once, without a reload; the bans it covers now are lifted."""
        log.info("allow-list: %d live entries in force", len(self.live.entries))
        self.allow = self.live.allow(self.cfg)
        for t in self.engine.reconfigure(self.cfg.policy, self.allow):
            log.info("release %s (allow-listed now)", t)
        self._release_allowed()
        self.firewall.allow = self.allow
        self.refused_seen.clear()
        self._sync("allow-list")
        self.exports_dirty = True
        self.live.done()

    def _release_allowed(self) -> None:
        """Bans of clients the allow-list covers by their verified name (addresses and
        networks: Engine.release_allowed)."""
        now = time.time()
        gone = newly_allowed(self.allow, self.store.active_bans(now))
        if gone:
            self.store.release(gone, "allow-list", now)
            for t in gone:
                self.engine.scorer.release(t)
                log.info("release %s (allow-listed now)", t)

    def _cleared(self) -> None:
        """Scores cleared elsewhere (`logban unban` of a client that was scored, not banned):
        the offences before the clearing no longer count here either."""
        now = time.time()
        got = self.store.cleared_since(self.cleared_mark, now)
        for target, at in got:
            self.engine.scorer.clear(target, at)
        # Looked at again for a moment: a reset stamped just before this look may commit after it.
        self.cleared_mark = max(self.cleared_mark, got[-1][1] if len(got) == 10_000 else now - 2)

    def _follower(self) -> Follower:
        return Follower(self.specs, self.store.positions(self.opts.node), max_line=self.cfg.parse.max_line,
                        from_start=self.cfg.daemon.from_start, poll=self.cfg.daemon.poll, log=log.info,
                        journals=self.journals)

    def _read(self) -> bool:
        chunks = self.follower.read()
        self.status.lines(chunks)
        m = self.metrics
        for c in chunks:
            p = self.parsers[c.mta]
            p.file = c.name
            p.clock.set_reference(time.time())
            offs = p.feed(c.data, c.lines_before)
            if m is not None:
                m.lines.labels(c.path).inc(c.data.count(b"\n"))
                for o in offs:
                    m.offences.labels(o.kind).inc()
            if offs:
                self.engine.add(offs)
        self._note_future()
        if m is not None:
            failures = sum(p.stats.no_header + p.stats.bad_address + p.stats.timeouts for p in self.parsers.values())
            if failures > m.failures_seen:
                m.parse_failures.inc(failures - m.failures_seen)
            m.failures_seen = failures
            for fs in self.follower.files:
                if fs.f is not None:
                    m.lag.labels(str(fs.spec.path)).set(max(0, os.fstat(fs.f.fileno()).st_size - fs.offset))
            for j in self.follower.journals:
                m.lag_seconds.labels(j.name).set(j.behind)
        return bool(chunks)

    def _note_future(self) -> None:
        """Stamps ahead of this host's clock (a sender's clock, forwarded RFC 5424 stamps): said
        at the first one, then at most hourly."""
        n = self.engine.stats.future
        if n > self.future_told and time.monotonic() >= self.future_next:
            self.future_next = time.monotonic() + 3600
            log.warning("%d offence(s) stamped more than %s ahead of this host's clock were counted as "
                        "read now (%d so far); check the clocks, or parse.clock_skew", n - self.future_told,
                        format_duration(self.engine.clock_skew), n)
            self.future_told = n

    def _export(self) -> None:
        from .export import render, write
        self.exports_dirty = False
        if not self.cfg.exports:
            return
        bans = self._screen((b for b in self.store.active_bans(time.time()) if not b.dry_run),
                            self.store.partners(self.allow))
        failed = False
        for o in self.cfg.exports:
            key = str(o.path)
            try:
                if write(o, render(o, bans)):
                    log.info("export %s: %d bans written to %s", o.format, len(bans), o.path)
            except (OSError, subprocess.SubprocessError, ExportError, UsageError) as e:
                failed = True
                if self.export_failing.get(key) != str(e):      # one line per change, not per retry
                    log.error("export %s to %s failed: %s (retrying, up to every %s)", o.format, o.path, e,
                              format_duration(EXPORT_BACKOFF_MAX))
                self.export_failing[key] = str(e)
                continue
            if self.export_failing.pop(key, None) is not None:
                log.warning("export %s to %s works again", o.format, o.path)
        # Retried with exponential backoff: a path that stays broken is not hammered every 2 s.
        self.exports_dirty = failed
        self.export_delay = min(self.export_delay * 2, EXPORT_BACKOFF_MAX) if failed else EXPORT_EVERY

    def _enforce(self, decided: list[Decision]) -> None:
        self.exports_dirty = True
        now = time.time()
        decided = self._screen(decided)
        dry = " (dry run: not enforced)" if self.dry_run else ""
        for d in decided:
            trig = d.trigger.raw[:TRIGGER_MAX].decode("utf-8", "replace") if d.trigger else ""
            log.info("ban %s %s score %g for %s (ban #%d%s) rule %s%s: %s", d.target, d.kind, d.score,
                     format_duration(d.duration), d.count, ", escalated" if d.escalated else "", d.rule, dry, trig)
            for m in d.members:
                if d.trigger is None or m != d.trigger.ip:     # the newest member was never banned alone
                    log.info("release %s (aggregated into %s)", m, d.target)
            if self.metrics is not None:
                self.metrics.bans_added.labels(d.kind).inc()
                if d.members:
                    self.metrics.bans_released.labels("aggregated").inc(len(d.members) - 1)
        add = {d.target: kernel_timeout(d.expires, now) for d in decided if d.expires is None or d.expires > now}
        # Only what this process knows the kernel holds: a member never enforced here (refused,
        # or its time ran out) is not there to delete.
        members = [m for d in decided for m in d.members if m in self.kernel]
        ends = [d.expires for d in decided if d.expires is not None]
        if ends:
            self.next_expiry = min(ends) if self.next_expiry is None else min(self.next_expiry, *ends)
        self._apply(add, members, now)
        self._gauge()

    def _apply(self, add: dict[str, int | None], remove: list[str], now: float) -> bool:
        """One batch to the kernel (in a dry run the removals only; nothing with the `none`
        backend), and note what it holds. False: the kernel was not what we thought (an
        overlapping network), and a full reconcile was done instead."""
        try:
            add = self.firewall.apply(add, remove)
        except FirewallError as e:
            log.warning("firewall: %s; reconciling", e)
            self._sync("repair")
            return False
        for t in remove:
            self.kernel.pop(t, None)
        for t, secs in add.items():
            self.kernel[t] = math.inf if secs is None else now + secs
        return True

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.bans_active.set(len(self.engine.scorer.active))

    def _expire(self) -> None:
        rows = self.store.expire(time.time())
        self.next_expiry = self.store.next_expiry()
        self.exports_dirty = self.exports_dirty or bool(rows)
        for r in rows:
            self.engine.scorer.release(r.target)
            log.info("release %s (%s ban over)", r.target, r.kind)
        if self.metrics is not None and rows:
            self.metrics.bans_released.labels("expiry").inc(len(rows))
        self._gauge()
        if rows and self.firewall.has_backend and not self.firewall.backend.kernel_timeouts:
            self._sync("expiry")          # no kernel timeouts: take the rules out now

    def _sync(self, why: str) -> None:
        try:
            p = self.firewall.sync()
        except FirewallError as e:
            log.error("firewall %s sync failed: %s", why, e)
            return
        except UNREACHABLE as e:
            log.error("firewall %s sync skipped: the store is unreachable (%s)", why, short_error(e))
            return
        now = time.time()
        self._note_refused(self.firewall.refused)
        self.kernel = {t: math.inf if secs is None else now + secs for t, secs in self.firewall.wanted.items()}
        if p.drift:
            log.warning("firewall %s sync: %d missing added, %d unknown removed, %d timeouts refreshed",
                        why, len(p.missing), len(p.unknown), len(p.stale))
        self._gauge()

    def _reload(self) -> None:
        try:
            cfg = load_config(self.opts.config_path)
            old_specs = self.specs, self.journals
            self._configure(cfg)
        except UsageError as e:
            log.error("reload refused, the running config stays: %s", e)
            return
        released = self.engine.reconfigure(cfg.policy, self.allow)
        self.engine.set_dry_run(self.dry_run)
        self.engine.clock_skew = cfg.parse.clock_skew
        self.next_expiry = self.store.next_expiry()
        for t in released:
            log.info("release %s (allow-listed now)", t)
        if (self.specs, self.journals) != old_specs:
            self.engine.flush(self.follower.positions())
            self.follower.close()
            self.follower = self._follower()
        old, self.firewall = self.firewall, self._firewall()
        self.refused_seen.clear()
        if type(old.backend) is not type(self.firewall.backend) and old.has_backend:
            # The new backend holds the bans first; then the old one's elements are lifted,
            # or they would drop traffic with no one left to lift them.
            self._sync("reload")
            try:
                old.backend.teardown()
                log.info("firewall: %s replaced by %s; its elements are lifted", old.backend.name,
                         self.firewall.backend.name)
            except FirewallError as e:
                log.error("firewall: lifting the old %s elements failed: %s", old.backend.name, e)
        else:
            self._sync("reload")
        self.exports_dirty = True
        log.info("reloaded %s", cfg.path or "the built-in defaults")
        sd_notify("STATUS=" + self._status())

    def _status(self) -> str:
        st = self.engine.stats
        return f"{len(self.engine.scorer.active)} bans active, {st.bans} added, {st.offences} offences"

    def _write_pid(self, path: Path) -> None:
        write_pid(path)         # O_NOFOLLOW, in a directory that is ours (pidfile.py)

    def _on_stop(self, signum, _frame) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        self.stopping = True

    def _on_hup(self, _signum, _frame) -> None:
        self.reload_wanted = True
