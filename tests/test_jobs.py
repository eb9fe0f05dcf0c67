"""A log read in parts on several processes gives, offence by offence, what one process gives."""
import bz2
import calendar
import dataclasses
import gzip
import json
import lzma
import os

import pytest
from conftest import SAMPLES

from logban.cli.common import read_source
from logban.jobs import Pool, _edges
from logban.parse import Clock, Parser
from logban.rules import load_rules
from logban.sources import READ_ERRORS, Source

RULES = load_rules(own_names=("mx.example.com", "192.0.2.25"))
REF = calendar.timegm((2026, 11, 1, 0, 0, 0))


def _sample_lines() -> list[list[bytes]]:
    logs = SAMPLES / "logs"
    out = []
    for p in sorted(logs.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            data = bz2.decompress(data) if p.suffix == ".bz2" else lzma.decompress(data) if p.suffix == ".xz" else data
            if p.suffix != ".gz" and data:
                out.append(data.splitlines(keepends=True))
    return out


def _mixed_log(rounds: int) -> bytes:
    """Every sample log (postfix with connection rates, sendmail queue-id sessions whose
    offence comes before its client, qmail pid sessions, tai64n, rsyslog) interleaved line by
    line, over and over, so sessions and rate windows cross every part's edge; and hostile lines."""
    samples = _sample_lines()
    out: list[bytes] = []
    for r in range(rounds):
        for i in range(max(map(len, samples))):
            for lines in samples:
                if i < len(lines):
                    out.append(lines[i])
        if r % 7 == 3:
            out += [b"Nov 20 10:00:01 mx postfix/smtpd[1]: connect from x[192.0.2.9" + b"9" * 20000 + b"]\n",
                    b"Nov 20 10:00:01 mx postfix/smtpd[1]: \xff\xfe\x00 lost connection after AUTH from unknown[\x00]\n",
                    b"\n", b"\x00" * 300 + b"\n"]
    return b"".join(out)


def _parser(tz: str = "UTC") -> Parser:
    return Parser(RULES, clock=Clock(tz, reference=REF), max_line=2048)


def _read(path, pool: Pool | None, tz: str = "UTC") -> tuple[list[tuple], dict]:
    p = _parser(tz)
    offs = [dataclasses.astuple(o) for got, _ in read_source(Source(str(path), path), p, pool=pool) for o in got]
    p.finish()
    return offs, dataclasses.asdict(p.stats)


def test_parts_give_what_one_process_gives(tmp_path):
    log = tmp_path / "mail.log"
    log.write_bytes(_mixed_log(60))
    os.utime(log, (REF, REF))
    edges = _edges(log, 4096)
    assert len(edges) > 50          # many parts: sessions and windows cross their edges
    data = log.read_bytes()
    assert all(data[e - 1:e] == b"\n" for e in edges[1:])
    one, one_stats = _read(log, None)
    with Pool(_parser(), 2, part=4096) as pool:
        assert pool.takes(Source(str(log), log))
        many, many_stats = _read(log, pool)
    assert len(one) > 1000
    rules = {o[3] for o in one}
    # Kinds of state the test must cover: a rate rule, a pid link, a queue-id link resolved later.
    assert {"postfix-connect-rate", "qmail-rblsmtpd"} <= rules, rules
    assert any(o[2] == "sendmail" for o in one)
    # The reply class goes through the stateless stage too: of keyed sendmail offences as well.
    assert {o[10] for o in one} == {0, 4, 5} and any(o[2] == "sendmail" and o[10] == 5 for o in one)
    assert one_stats["truncated"] > 0
    for a, b in zip(one, many):
        assert a == b
    assert len(one) == len(many)
    # Every count but the pre-filter's work, which depends on how the input is cut (a chunk
    # holding an RFC 5424 line is searched more widely), not on what it finds.
    one_stats.pop("candidates"), many_stats.pop("candidates")
    assert one_stats == many_stats


COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lambda d: lzma.compress(d, preset=0)}


def _big_log(size: int = 3_000_000) -> bytes:
    """The mixed log over and over: chunks (1 MiB) enough to be handed to the workers."""
    data = _mixed_log(1)
    return data * (size // len(data) + 1)


def _read_to_error(path, pool: Pool | None) -> tuple[list[tuple], dict, tuple | None]:
    """Offences, counts, and the read error with the lines read before it (None: none)."""
    p = _parser()
    offs, lines, error = [], 0, None
    try:
        for got, lines in read_source(Source(str(path), path), p, pool=pool):
            offs += [dataclasses.astuple(o) for o in got]
    except READ_ERRORS as e:
        error = (type(e), lines)
    p.finish()
    return offs, dataclasses.asdict(p.stats), error


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_a_compressed_log_matched_on_the_workers_gives_what_one_process_gives(tmp_path, suffix):
    """Read here, its chunks matched by the workers: the same offences and counts as one
    process; cut short, the same offences up to the error (met with chunks in flight), then
    the same error."""
    whole = COMPRESS[suffix](_big_log(6_000_000))
    for name, blob in (("whole", whole), ("cut", whole[:-10])):      # its last block or end marker lost
        log = tmp_path / f"{name}.log.1.{suffix}"
        log.write_bytes(blob)
        os.utime(log, (REF, REF))
        one = _read_to_error(log, None)
        with Pool(_parser(), 2) as pool:
            assert not pool.takes(Source(str(log), log))       # not cut into parts: streamed
            handed = []
            submit = pool._ex.submit
            pool._ex.submit = lambda fn, *a: handed.append(fn.__name__) or submit(fn, *a)
            many = _read_to_error(log, pool)
        assert handed.count("_match_chunk") >= 3
        assert len(one[0]) > 1000 and (one[2] is None) == (name == "whole")
        assert one == many


@pytest.mark.parametrize("compressed", [False, True])
def test_repeated_hour_read_again_in_order(tmp_path, compressed):
    """The hour a fall-back repeats: its second pass is later only for a reader that saw the
    first. A part of a file, or a chunk of a compressed one, that met it is read again here."""
    stamps = [f"Oct 25 {h:02d}:{m:02d}:00" for h, m in [(1, 50)] + [(2, m) for m in range(0, 60, 2)] * 2 + [(3, 10)]]
    data = b"".join(
        f"{s} mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[192.0.2.{i % 200 + 10}]: 454 4.7.1 "
        f"<a@example.net>: Relay access denied; from=<b@example.org> to=<a@example.net> proto=ESMTP helo=<x>\n".encode()
        for i, s in enumerate(stamps * (300 if compressed else 40)))       # compressed: chunks of 1 MiB, three
    log = tmp_path / ("mail.log.1.gz" if compressed else "mail.log")
    log.write_bytes(gzip.compress(data) if compressed else data)
    os.utime(log, (REF, REF))
    one, _ = _read(log, None, "Europe/Berlin")
    with Pool(_parser("Europe/Berlin"), 2, part=2048) as pool:
        many, _ = _read(log, pool, "Europe/Berlin")
    times = [o[0] for o in one[:len(stamps)]]
    assert times == sorted(times) and len(set(times)) == len(stamps)     # the second pass is the later hour
    assert one == many


def test_cli_jobs_same_report_events_and_bans(tmp_path, logban):
    """The real process: a file large enough to be read in parts gives the same events and
    report, and `scan --apply` records the same bans."""
    log = tmp_path / "mail.log"
    data = _mixed_log(1)
    log.write_bytes(data * (3_000_000 // len(data) + 1))          # over two parts of 1 MiB
    outs = {}
    for jobs in ("1", "2"):
        ev = logban("scan", "--events", "--jobs", jobs, str(log))
        rep = logban("scan", "--json", "--jobs", jobs, str(log))
        db = f"sqlite:///{tmp_path}/jobs{jobs}.db"
        applied = logban("--db", db, "scan", "--apply", "--dry-run", "--json", "--jobs", jobs, str(log))
        bans = logban("--db", db, "list", "--all", "--json")
        for r in (ev, rep, applied, bans):
            assert r.returncode == 0, r.stderr
        report = json.loads(rep.stdout)
        report.pop("seconds")
        recorded = json.loads(applied.stdout)["applied"]
        recorded.pop("database")
        outs[jobs] = (ev.stdout, report, recorded, json.loads(bans.stdout))
    assert outs["1"][0].count(b"\n") > 1000 and outs["1"][2]["bans"] > 0
    assert outs["1"] == outs["2"]


def test_cli_jobs_rotated_sets_and_stdin(tmp_path, logban):
    """Rotated sets (compressed, plain, small) and standard input on several cores: the same
    events, in the same order, the same report, and with --apply (two logs merged by time)
    the same bans as one process."""
    big = _big_log()
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "mail.log.2.gz").write_bytes(gzip.compress(big))
    (logs / "mail.log.1").write_bytes(big)
    (logs / "mail.log").write_bytes(_mixed_log(1))
    (logs / "other.log.1.bz2").write_bytes(bz2.compress(big[:len(big) // 2]))
    outs = {}
    for jobs in ("1", "2"):
        db = f"sqlite:///{tmp_path}/jobs{jobs}.db"
        runs = (logban("scan", "--events", "--jobs", jobs, str(logs)),
                logban("scan", "--json", "--jobs", jobs, str(logs)),
                logban("scan", "--events", "--jobs", jobs, "-", stdin=big),
                logban("--db", db, "scan", "--apply", "--dry-run", "--json", "--jobs", jobs, str(logs)),
                logban("--db", db, "list", "--all", "--json"))
        for r in runs:
            assert r.returncode == 0, r.stderr
        report = json.loads(runs[1].stdout)
        report.pop("seconds")
        recorded = json.loads(runs[3].stdout)["applied"]
        recorded.pop("database")
        outs[jobs] = (runs[0].stdout, report, runs[2].stdout, recorded, json.loads(runs[4].stdout))
    assert outs["1"][0].count(b"\n") > 3000 and outs["1"][2].count(b"\n") > 1000 and outs["1"][3]["bans"] > 0
    assert outs["1"] == outs["2"]


def test_jobs_argument(logban, tmp_path):
    r = logban("scan", "--jobs", "many", str(tmp_path))
    assert r.returncode == 2 and b"--jobs" in r.stderr


@pytest.mark.parametrize("part", [1, 100])
def test_edges_of_a_file_without_newlines(tmp_path, part):
    log = tmp_path / "one-line.log"
    log.write_bytes(b"x" * 1000)
    assert _edges(log, part) == [0]


def _children(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return {int(p) for p in f.read().split()}
    except FileNotFoundError:
        return set()


def _alive(pid: int) -> bool:
    """Running, not gone nor a zombie waiting for a parent that may never reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("apply", [False, True])
def test_workers_and_writer_end_with_a_scan_killed_by_sigkill(tmp_path, apply):
    """A `kill -9` of a scan leaves no process behind: its workers (and, for --apply, its
    store's writer) wait on pipes its other children hold open too, so only the kernel's
    parent-death signal ends them (they waited forever before)."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    extra = ["--db", f"sqlite:///{tmp_path}/s.db", "scan", "--apply"] if apply else ["scan"]
    p = subprocess.Popen([sys.executable, "-m", "logban", "--backend", "none", *extra, "--jobs", "2", "--no-progress", "-"],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    kids: set[int] = set()
    try:
        line = b"Nov 21 09:00:00 mx postfix/smtpd[1]: connect from unknown[192.0.2.7]\n"
        p.stdin.write(line * 60_000)        # chunks enough that some go to the workers
        p.stdin.flush()                     # and standard input stays open: the scan waits for more
        deadline = time.monotonic() + 30
        while len(kids := _children(p.pid)) < (3 if apply else 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(kids) >= 2, f"the scan forked {kids}"
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)
        deadline = time.monotonic() + 10
        while any(map(_alive, kids)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [k for k in kids if _alive(k)], "processes of the killed scan still run"
    finally:
        if p.poll() is None:
            p.kill()
        for k in kids:                      # the processes a failure left behind
            if _alive(k):
                os.kill(k, signal.SIGKILL)
