"""Benchmark `logban report` on a SQLite store of 10M offences.

Builds the store once (bench/out/report-<N>.db, reused while its row count matches):
the schema from logban itself (so its migrations and indexes are the real ones),
then the rows by bulk insert with the indexes dropped and made again after, and the
hourly counts as the schema migration makes them. The offences spread over the
last 30 days (a month's retention); the real `logban report` process is timed for
the default `--since 7d` and for `--since 30d`, which reads all of them, as HTML and
as text, with wall seconds and peak RSS.

    python3 bench/report_bench.py [--offences N] [--runs K] [--rebuild]
"""
from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
sys.path.insert(0, str(ROOT))

RULES = [("postfix", "postfix-unknown-user", "unknown_user", 1.0), ("postfix", "postfix-sasl-failed", "auth_failed", 1.0),
         ("postfix", "postfix-dnsbl", "dnsbl", 5.0), ("postfix", "postfix-relay-denied", "relay_denied", 2.0),
         ("postfix", "postscreen-pregreet", "pregreet", 3.0), ("postfix", "postfix-helo-rejected", "bad_helo", 2.0),
         ("postfix", "postfix-lost-early", "protocol_abuse", 0.5), ("sendmail", "sendmail-user-unknown", "unknown_user", 1.0),
         ("sendmail", "sendmail-auth-failure", "auth_failed", 1.0), ("qmail", "qmail-rblsmtpd", "dnsbl", 5.0),
         ("qmail", "spamdyke-sender", "bad_sender", 2.0), ("postfix", "postfix-client-rejected", "client_rejected", 2.0)]
NODES = ["mx1", "mx2", "mx3"]
DAYS = 30
TEXT = ("Dec  1 12:00:00 mx postfix/smtpd[4242]: NOQUEUE: reject: RCPT from unknown[{ip}]: 550 5.1.1 "
        "<info@example.org>: Recipient address rejected: User unknown; proto=ESMTP helo=<x>")


def addresses(n: int, rnd: random.Random) -> list[str]:
    """IPv4 clients clustered in /24s (neighbours attack together), one in 20 an IPv6 /64."""
    out = []
    for i in range(n):
        if i % 20 == 0:
            out.append(f"2001:db8:{rnd.randrange(1 << 16):x}:{rnd.randrange(64):x}::/64")
        else:
            out.append(f"{rnd.choice((198, 203, 100))}.{rnd.randrange(256)}.{rnd.randrange(64)}.{rnd.randrange(1, 255)}")
    return out


def build(db: Path, offences: int, targets: int) -> None:
    from logban.store import Store
    for f in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        f.unlink(missing_ok=True)
    Store(f"sqlite:///{db}").close()                    # the real schema, at its version
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=OFF")
    con.execute("PRAGMA synchronous=OFF")
    indexes = con.execute("SELECT name, sql FROM sqlite_master WHERE type='index' AND sql IS NOT NULL "
                          "AND tbl_name IN ('offences', 'offenders', 'bans')").fetchall()
    for name, _ in indexes:
        con.execute(f"DROP INDEX {name}")
    rnd = random.Random(17)
    pool = addresses(targets, rnd)
    now = time.time()
    start, step = now - DAYS * 86400 + 60, (DAYS * 86400 - 120) / offences
    t0 = time.perf_counter()
    # Zipf-like: a few clients make most of the noise.
    weights = [1 / (i + 1) ** 0.8 for i in range(len(pool))]
    seen: dict[str, list] = {}
    batch = 200_000
    for b in range(0, offences, batch):
        who = rnd.choices(range(len(pool)), weights, k=min(batch, offences - b))
        rows = []
        for j, w in enumerate(who):
            i = b + j
            tgt = pool[w]
            ip = tgt.replace("::/64", "::1") if "/" in tgt else tgt
            mta, rule, kind, score = RULES[(w + i // 7) % len(RULES)]
            t = start + i * step
            rows.append((t, tgt, ip, mta, rule, kind, score, NODES[w % 3], "/var/log/mail.log", i + 1,
                         TEXT.format(ip=ip), f"host{w}.example.net" if w % 7 == 0 else None))
            s = seen.get(tgt)
            if s is None:
                seen[tgt] = [t, t, 1, f"host{w}.example.net" if w % 7 == 0 else None]
            else:
                s[1] = t
                s[2] += 1
        con.executemany("INSERT INTO offences (time, target, ip, mta, rule, kind, score, node, file, line, text, name) "
                        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    con.executemany("INSERT INTO offenders (target, score, score_time, first_seen, last_seen, offences, kinds, name, "
                    "reset_at) VALUES (?, 0, ?, ?, ?, ?, 1, ?, 0)",
                    ((k, v[1], v[0], v[1], v[2], v[3]) for k, v in seen.items()))
    bans, n = [], 0
    for k, v in seen.items():
        if v[2] < 20:
            continue
        for c in range(1, 1 + min(3, v[2] // 200 + 1)):
            created = v[0] + (v[1] - v[0]) * c / 4          # spread over the client's month
            exp = created + 3600 * c * c
            over = exp <= now
            bans.append((k, "unknown_user", "postfix-unknown-user", "score", 10.0, created, exp, exp - created,
                         exp if over else None, "expiry" if over else None, c, c > 1, False, NODES[n % 3]))
            n += 1
    con.executemany("INSERT INTO bans (target, kind, rule, reason, score, created, expires, duration, released, "
                    "release_reason, count, escalated, dry_run, node, source, members, text) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,'auto','','')", bans)
    con.executemany("INSERT INTO positions (node, path, dev, inode, fingerprint, fp_len, \"offset\", lines, updated) "
                    "VALUES (?, '/var/log/mail.log', 1, 2, 'x', 64, 1000000, ?, ?)",
                    [(nd, offences * 20, now) for nd in NODES])
    con.commit()
    for _, sql in indexes:
        con.execute(sql)
    import sqlalchemy as sa

    from logban.store import fill_offence_hours
    eng = sa.create_engine(f"sqlite:///{db}")
    with eng.begin() as c:
        fill_offence_hours(c)
    eng.dispose()
    con.execute("ANALYZE")
    con.commit()
    con.close()
    print(f"built {db}: {offences:,} offences, {len(seen):,} targets, {len(bans):,} bans "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)


def timed(cmd: list[str]) -> tuple[float, int, bytes]:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    secs = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.decode()[-500:]}")
    return secs, ru.ru_utime + ru.ru_stime, ru.ru_maxrss // 1024, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--offences", type=int, default=10_000_000)
    ap.add_argument("--targets", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rebuild", action="store_true")
    a = ap.parse_args()
    OUT.mkdir(exist_ok=True)
    db = OUT / f"report-{a.offences}.db"
    if a.rebuild or not db.exists():
        build(db, a.offences, a.targets)
    else:
        from logban.store import Store
        Store(f"sqlite:///{db}").close()                # migrated if logban's schema moved on
    html = OUT / "report.html"
    for since in ("7d", "30d"):
        base = [sys.executable, "-m", "logban", "--db", f"sqlite:///{db}", "report", "--since", since]
        for fmt, extra in (("html", ["-o", str(html)]), ("text", ["--format", "text"])):
            best = None
            for _ in range(a.runs):
                secs, cpu, rss, out = timed(base + extra)
                best = (secs, cpu, rss) if best is None or secs < best[0] else best
            size = html.stat().st_size if fmt == "html" else len(out)
            print(f"report --since {since:<3} --format {fmt:<4}  {a.offences:,} offences in the store: "
                  f"{best[0]:6.2f} s wall, {best[1]:6.2f} s CPU (best of {a.runs}), peak RSS {best[2]:,} MiB, "
                  f"output {size:,} bytes  [load average {os.getloadavg()[0]:.1f}]", flush=True)


if __name__ == "__main__":
    main()
