"""Benchmark the daemon: latency from an appended line to the ban, and sustained follow rate.

    python3 bench/daemon_bench.py [--bans 1000] [--past 1000000 --past-bans 200 --gap 0.5]
                                  [--rate 50000] [--seconds 20] [--backend none]
    python3 bench/daemon_bench.py --journal [--bans 1000] [--rate 20000] [--seconds 20]

Latency: one offending line (a DNSBL reject, which bans at once) appended at a
time; the time until the ban is in the kernel set (as root with nft: logban runs
in a namespace of its own with the nftables backend) or else in the store (the
`none` backend). p50 and p99 over --bans bans, on a young store and on a store
that already holds --past released bans of the last three weeks (within the
retention: pruning does not make them go away), --past-bans bans at random
moments --gap seconds apart on average (so that a ban can meet whatever the
daemon does between lines). Target: p99 under 200 ms on the young store, under
100 ms with a million past bans. `--seconds 0` skips the follow rate.

Follow rate: a realistic mixed Postfix log (bench/genlog.py) appended at --rate
lines/s for --seconds; the daemon's committed read position is sampled to show
its lag, and its peak RSS is read from /proc. Target: 50,000 lines/s kept up
with (lag bounded), under 150 MB RSS.

--journal: the same through the systemd journal (`logban run --journal-dir`), the
entries written by systemd-journal-remote (a journal file as journald writes it):
the latency of one entry to its ban, and the follow rate with an MTA mix (the
Postfix log above, one entry in five of sendmail, qmail and programs that are no
MTA), with the CPU time logban and its journalctl used. Target: p99 under 100 ms,
20,000 entries/s kept up with, under 150 MB RSS.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def stamp() -> str:
    return time.strftime("%b %e %H:%M:%S", time.gmtime())


def dnsbl(ip: str) -> str:
    return (f"{stamp()} mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 Service "
            f"unavailable; Client host [{ip}] blocked using zen.spamhaus.org; from=<a@b.example> "
            f"to=<c@d.example> proto=ESMTP helo=<x>\n")


class Daemon:
    def __init__(self, tmp: Path, log: Path | list[str], backend: str, netns: str | None) -> None:
        """`log`: the file to follow, or the command line's source options (["--journal-dir", DIR])."""
        cfg = tmp / "logban.toml"
        cfg.write_text(f'[parse]\ntimezone = "UTC"\n[daemon]\npid_file = "{tmp}/logban.pid"\n')
        self.db = tmp / "logban.db"
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.p = subprocess.Popen([*prefix, sys.executable, "-m", "logban", "-c", str(cfg), "--db",
                                   f"sqlite:///{self.db}", "--backend", backend, "run",
                                   *(log if isinstance(log, list) else ["--follow", str(log)])],
                                  stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.ready = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()
        if not self.ready.wait(60):
            raise SystemExit("logban run did not start")
        self.pid = self._python_pid()

    def _watch(self) -> None:
        for line in self.p.stderr:
            if "running:" in line:
                self.ready.set()

    def _python_pid(self) -> int:
        # Under `ip netns exec` the Python process is the child of Popen's.
        pid = self.p.pid
        kids = Path(f"/proc/{pid}/task/{pid}/children")
        for k in kids.read_text().split() if kids.exists() else []:
            if Path(f"/proc/{k}/comm").read_text().startswith("python"):     # not its journalctl
                return int(k)
        return pid

    def peak_rss_mib(self, pid: int | None = None) -> float:
        for line in Path(f"/proc/{pid or self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self, pid: int | None = None) -> float:
        """User and system CPU time used so far: what a loaded machine cannot blur."""
        fields = Path(f"/proc/{pid or self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def children(self) -> list[int]:
        return [int(k) for k in Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]

    def children_rss_mib(self) -> float:
        """Peak RSS of the daemon's children (journalctl), summed."""
        return sum(self.peak_rss_mib(k) for k in self.children())

    def query(self, sql: str, *args):
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(30)


JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
BOOT = uuid.uuid4().hex


class JournalWriter:
    """Real journal files, written as journald would: one systemd-journal-remote process that
    appends each entry written to its stdin (export format) to DIR/remote.journal."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        self.p = subprocess.Popen([JOURNAL_REMOTE, "-o", str(directory / "remote.journal"), "-"],
                                  stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.mono = 0

    @staticmethod
    def fields(line: str | bytes) -> bytes:
        """A syslog line ("stamp host prog[pid]: message") as the fields of a journal entry
        other than its stamps."""
        raw = line.encode() if isinstance(line, str) else line
        head, _, msg = raw.partition(b": ")
        ident, _, pid = head.rsplit(b" ", 1)[-1].partition(b"[")
        return (b"_BOOT_ID=%s\n_HOSTNAME=mx1\nSYSLOG_IDENTIFIER=%s\n_PID=%s\nPRIORITY=6\n_TRANSPORT=syslog\n"
                b"MESSAGE=%s\n\n" % (BOOT.encode(), ident, pid.rstrip(b"]") or b"1", msg.rstrip(b"\n")))

    def entry(self, fields: bytes, t: float | None = None) -> bytes:
        """An entry of `fields` (from fields()) stamped `t` (default now)."""
        self.mono += 1
        return b"__REALTIME_TIMESTAMP=%d\n__MONOTONIC_TIMESTAMP=%d\n%s" % (
            int((time.time() if t is None else t) * 1e6), self.mono, fields)

    def write(self, data: bytes) -> None:
        self.p.stdin.write(data)
        self.p.stdin.flush()

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(60)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def fill_past(db: Path, n: int) -> None:
    """`n` released bans of distinct /64s over the last three weeks, written straight into the file."""
    from logban.store import Store
    Store(f"sqlite:///{db}").close()
    now = time.time()
    with sqlite3.connect(db) as con:
        for lo in range(0, n, 100_000):
            rows = []
            for i in range(lo, min(n, lo + 100_000)):
                created = now - 21 * 86400 + i * (20 * 86400 / n)
                rows.append((f"2001:db8:{0x100 + (i >> 16):x}:{i & 0xffff:x}::/64", created, created + 3600,
                             created + 3600))
            con.executemany("INSERT INTO bans (target, kind, rule, reason, score, created, expires, duration, "
                            "released, release_reason, count, escalated, dry_run, node, source, members, text) "
                            "VALUES (?, 'dnsbl', 'postfix-dnsbl', 'bench', 5, ?, ?, 3600, ?, 'expiry', 1, 0, 0, "
                            "'old', 'auto', '', '')", rows)
        con.commit()
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")     # as a store that has lived with its daemon


def latency(n: int, tmp: Path, past: int = 0, store_only: bool = False, gap: float = 0.0,
            journal: bool = False) -> None:
    from logban.firewall.nftables import set_of
    kernel = not store_only and os.geteuid() == 0 and shutil.which("nft") is not None and shutil.which("ip") is not None
    ns = f"lbdb{uuid.uuid4().hex[:6]}" if kernel else None
    if ns:
        subprocess.run(["ip", "netns", "add", ns], check=True)
    where_dir = tmp / f"lat{past}"
    log = where_dir / "latency.log"
    where_dir.mkdir()
    log.write_text("")
    writer = JournalWriter(where_dir / "journal") if journal else None
    if writer:              # the journal file exists when logban starts, as on a running host
        writer.write(writer.entry(writer.fields("Dec  2 10:00:00 mx1 CRON[1]: session opened")))
    d = None
    try:
        if past:
            t0 = time.perf_counter()
            fill_past(where_dir / "logban.db", past)
            print(f"              {past:,} past bans written in {time.perf_counter() - t0:.1f} s", flush=True)
        t0 = time.perf_counter()
        d = Daemon(where_dir, ["--journal-dir", str(where_dir / "journal")] if writer else log,
                   "nftables" if kernel else "none", ns)
        started = time.perf_counter() - t0
        times = []
        for i in range(n):
            net = f"2001:db8:{0x4000 + (i >> 16):x}:{i & 0xffff:x}"
            target = str(ipaddress.ip_network(f"{net}::/64"))
            held = set_of(target)[0]
            t0 = time.perf_counter()
            if writer:
                writer.write(writer.entry(writer.fields(dnsbl(f"{net}::1"))))
            else:
                with open(log, "a") as f:
                    f.write(dnsbl(f"{net}::1"))
            deadline = t0 + 10
            while True:
                if kernel:
                    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "get", "element", "inet", "logban",
                                          held, f"{{ {net}:: }}"], capture_output=True).returncode == 0
                else:
                    out = bool(d.query("SELECT 1 FROM bans WHERE target = ?", target))
                if out:
                    break
                if time.perf_counter() > deadline:
                    raise SystemExit(f"ban {i} of {target} not seen within 10 s")
                time.sleep(0.001)
            times.append(time.perf_counter() - t0)
            if gap:
                time.sleep(random.uniform(0, 2 * gap))     # bans at random moments, not in step with the loop
        rss = d.peak_rss_mib() if not kernel else float("nan")
    finally:
        if d is not None:           # a failed run leaves no daemon behind either
            d.stop()
        if writer:
            writer.close()
        if ns:
            subprocess.run(["ip", "netns", "del", ns])
    where = "the kernel set (nftables, in a namespace)" if kernel else "the store (backend none)"
    ms = [t * 1000 for t in times]
    worst = max(range(len(ms)), key=ms.__getitem__)
    store = f"a store with {past:,} past bans (started in {started:.1f} s)" if past else "a young store"
    if journal:
        store += ", entry appended to a journal"
    if gap:
        store += f", {gap:g} s apart on average"
    print(f"latency       {n:,} bans on {store}, line appended -> ban in {where}: p50 {statistics.median(ms):.0f} ms, "
          f"p99 {pct(ms, 0.99):.0f} ms, max {max(ms):.0f} ms (ban #{worst + 1})   "
          f"(target p99 < {100 if past or journal else 200} ms)"
          + (f"; peak RSS {rss:.0f} MiB" if rss == rss else ""), flush=True)


def follow_rate(rate: int, seconds: float, tmp: Path) -> None:
    src = HERE / "out" / "mail-1000000.log"
    if not src.exists() or time.time() - src.stat().st_mtime > 86400:      # stamps relative to its day
        src.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "genlog.py"), "-n", "1000000", "-o", str(src)], check=True)
    lines = src.read_bytes().splitlines(keepends=True)
    log = tmp / "follow.log"
    log.write_text("")
    (tmp / "fol").mkdir()
    d = Daemon(tmp / "fol", log, "none", None)
    total = int(rate * seconds)
    written = 0
    lags: list[int] = []
    t0 = time.perf_counter()
    step = 0.05
    with open(log, "ab") as f:
        while written < total:
            due = min(total, int((time.perf_counter() - t0) * rate) + int(rate * step))
            if due > written:
                f.write(b"".join(lines[i % len(lines)] for i in range(written, due)))
                f.flush()
                written = due
            got = d.query("SELECT offset FROM positions")
            lags.append(f.tell() - (got[0][0] if got else 0))
            time.sleep(step)
        size = f.tell()
    wrote_secs = time.perf_counter() - t0
    while True:
        got = d.query("SELECT offset FROM positions")
        if got and got[0][0] >= size:
            break
        if time.perf_counter() - t0 > seconds * 10 + 60:
            raise SystemExit("the daemon did not catch up")
        time.sleep(0.05)
    done = time.perf_counter() - t0
    rss = d.peak_rss_mib()
    d.stop()
    avg_line = size / total
    print(f"follow        {total:,} lines appended at {total / wrote_secs:,.0f} lines/s over {wrote_secs:.1f} s; "
          f"caught up {done - wrote_secs:.2f} s after the last write ({total / done:,.0f} lines/s overall)")
    print(f"              lag: median {statistics.median(lags) / avg_line:,.0f} lines, max {max(lags) / avg_line:,.0f} "
          f"lines ({max(lags) / avg_line / rate:.2f} s of input); peak RSS {rss:.0f} MiB   "
          f"(target: 50,000 lines/s kept up with, < 150 MB)")


# What else a mail host's journal holds: sendmail, qmail, and programs that are no MTA at all.
OTHERS = [
    ("sm-mta[{pid}]: 4AKA{pid}: ruleset=check_rcpt, arg1=<spam@example.net>, relay=bot.example.biz [{ip}] "
     "(may be forged), reject=550 5.7.1 <spam@example.net>... Relaying denied"),
    ("sm-mta[{pid}]: 4AKA{pid}: from=<a@example.org>, size=1234, class=0, nrcpts=1, proto=ESMTP, daemon=MTA, "
     "relay=mail.example.org [{ip}]"),
    "qmail-smtpd[{pid}]: 553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
    "rblsmtpd[{pid}]: {ip} pid {pid}: 451 http://www.spamhaus.org/query/bl?ip={ip}",
    "CRON[{pid}]: pam_unix(cron:session): session opened for user root(uid=0) by (uid=0)",
    "systemd[1]: Started session-{pid}.scope - Session {pid} of User root.",
    "kernel: [UFW BLOCK] IN=eth0 OUT= SRC={ip} DST=192.0.2.25 PROTO=TCP DPT=23",
]


def journal_rate(rate: int, seconds: float, tmp: Path) -> None:
    """Entries of the MTA mix (the Postfix log of bench/genlog.py, and one entry in five of
    sendmail, qmail and programs that are no MTA) appended to a journal at `rate` entries/s."""
    src = HERE / "out" / "mail-1000000.log"
    if not src.exists() or time.time() - src.stat().st_mtime > 86400:
        src.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "genlog.py"), "-n", "1000000", "-o", str(src)], check=True)
    rng = random.Random(7)
    lines = src.read_bytes().splitlines()[:200_000]
    for i in range(0, len(lines), 5):
        ip = f"203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        lines[i] = ("Dec  2 10:00:00 mx1 " + rng.choice(OTHERS).format(pid=rng.randrange(1000, 60000), ip=ip)).encode()
    # Prefix sums of the mail entries (those logban selects by default) among the lines.
    cum = [0]
    for ln in lines:
        cum.append(cum[-1] + (not ln.partition(b": ")[0].rsplit(b" ", 1)[-1].startswith(
            (b"CRON", b"systemd", b"kernel", b"dovecot"))))
    (tmp / "jr").mkdir()
    writer = JournalWriter(tmp / "jr" / "journal")
    fields = [writer.fields(ln) for ln in lines]
    writer.write(writer.entry(fields[0]))                   # the file exists when logban starts
    d = Daemon(tmp / "jr", ["--journal-dir", str(tmp / "jr" / "journal")], "none", None)
    cpu0 = d.cpu_seconds()
    total = int(rate * seconds)
    n_sel = lambda k: (k // len(lines)) * cum[-1] + cum[k % len(lines)]
    written, lags = 0, []
    t0 = time.perf_counter()
    step = 0.05
    while written < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + int(rate * step))
        if due > written:
            writer.write(b"".join(writer.entry(fields[(i + 1) % len(fields)]) for i in range(written, due)))
            written = due
        got = d.query("SELECT lines FROM positions")
        lags.append(n_sel(written + 1) - n_sel(1) - (got[0][0] if got else 0))     # mail entries not read yet
        time.sleep(max(0.0, step - (time.perf_counter() - t0) % step))
    wrote_secs = time.perf_counter() - t0
    want = n_sel(total + 1) - n_sel(1)
    while True:
        got = d.query("SELECT lines FROM positions")
        if got and got[0][0] >= want:
            break
        if time.perf_counter() - t0 > seconds * 10 + 60:
            raise SystemExit(f"the daemon did not catch up ({got} of {want})")
        time.sleep(0.05)
    done = time.perf_counter() - t0
    rss, kids = d.peak_rss_mib(), d.children_rss_mib()
    cpu, cpu_kids = d.cpu_seconds() - cpu0, sum(d.cpu_seconds(k) for k in d.children())
    d.stop()
    writer.close()
    print(f"journal follow {total:,} entries appended at {total / wrote_secs:,.0f} entries/s over {wrote_secs:.1f} s "
          f"({want:,} of them mail entries); caught up {done - wrote_secs:.2f} s after the last write "
          f"({total / done:,.0f} entries/s overall)")
    print(f"              lag: median {statistics.median(lags):,.0f} entries, max {max(lags):,.0f} entries "
          f"({max(lags) / rate:.2f} s of input); peak RSS {rss:.0f} MiB (+ journalctl {kids:.0f} MiB)   "
          f"(target: 20,000 entries/s kept up with, < 150 MB)")
    print(f"              CPU time: logban {cpu:.1f} s, its journalctl {cpu_kids:.1f} s for {total:,} entries: "
          f"{total / cpu:,.0f} entries per CPU second of logban, {total / max(cpu_kids, 1e-9):,.0f} of journalctl "
          f"(each on a core of its own: the rate an idle machine can keep up with)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bans", type=int, default=1000)
    ap.add_argument("--past", type=int, default=1_000_000, help="past bans in the second latency run (0: none)")
    ap.add_argument("--past-bans", type=int, default=200, help="bans measured on the store with past bans")
    ap.add_argument("--gap", type=float, default=0.5,
                    help="mean seconds between those bans (random: each meets the daemon wherever it is)")
    ap.add_argument("--backend", choices=("auto", "none"), default="auto",
                    help="none: latency up to the store even as root (no namespace, no nft)")
    ap.add_argument("--rate", type=int, default=50_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--journal", action="store_true",
                    help="the source is a journal (written by systemd-journal-remote) instead of a file; "
                         "--rate then defaults to 20,000 entries/s")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if a.journal:
            if a.bans:
                latency(a.bans, tmp, store_only=a.backend == "none", journal=True)
            if a.seconds > 0:
                journal_rate(a.rate if a.rate != 50_000 else 20_000, a.seconds, tmp)
            return
        latency(a.bans, tmp, store_only=a.backend == "none")
        if a.past:
            latency(a.past_bans, tmp, a.past, store_only=a.backend == "none", gap=a.gap)
        if a.seconds > 0:
            follow_rate(a.rate, a.seconds, tmp)


if __name__ == "__main__":
    main()
