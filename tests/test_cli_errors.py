"""Issue 13: what a careful admin meets on the command line, with the real `logban` process.
One clear line per mistake with the contract's exit status, no more privilege or
kernel state than asked for, and a store other users can only read."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES, as_nobody, run_logban, skip_or_fail

GOOD = SAMPLES / "logs" / "postfix" / "mail.log"
DNSBL = ("Nov 20 10:00:01 mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from unknown[198.51.100.{i}]: 554 5.7.1 "
         "Service unavailable; Client host [198.51.100.{i}] blocked using zen.spamhaus.org; from=<a@b.example> "
         "to=<c@d.example> proto=ESMTP helo=<x>\n")


def one_line(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        skip_or_fail(f"needs root for {what}")


def store(tmp: Path) -> str:
    return f"sqlite:///{tmp}/logban.db"


# ---- inputs and outputs -------------------------------------------------------------------

def test_scan_with_a_missing_file_reads_the_others_and_exits_1(tmp_path):
    r = run_logban("scan", "--json", str(tmp_path / "nope.log"), str(GOOD))
    assert r.returncode == 1
    assert re.fullmatch(r"logban: \S*nope\.log: no such file or directory\n", one_line(r))
    rep = json.loads(r.stdout)
    assert rep["failed"] == [str(tmp_path / "nope.log")] and rep["offences"] > 0 and str(GOOD) in rep["files"]



def test_a_file_failing_midway_names_how_far_into_it_not_into_the_run(tmp_path):
    import gzip
    whole = gzip.compress("".join(DNSBL.format(i=1 + i % 50) for i in range(40_000)).encode())
    (tmp_path / "b").mkdir()
    broken = tmp_path / "b" / "mail.log.2.gz"
    broken.write_bytes(whole[: len(whole) // 2])            # cut short: EOFError part-way
    (tmp_path / "a").mkdir()
    good = tmp_path / "a" / "mail.log"                      # read first: its path sorts first
    good.write_bytes(GOOD.read_bytes())
    told = []
    for order in ((broken,), (good, broken), (broken, good)):
        r = run_logban("scan", "--json", *map(str, order))
        assert r.returncode == 1
        m = re.fullmatch(r"logban: \S*mail\.log\.2\.gz: .* \(after ([\d,]+) lines read\)\n", one_line(r))
        assert m, r.stderr
        told.append(int(m[1].replace(",", "")))
    assert 0 < told[0] < 40_000 and told == [told[0]] * 3

def test_closed_stdout_ends_scan_quietly(tmp_path):
    log = tmp_path / "big.log"
    log.write_text("".join(DNSBL.format(i=1 + i % 200) for i in range(60_000)))
    p = subprocess.Popen([sys.executable, "-m", "logban", "--backend", "none", "scan", "--events", str(log)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    first = p.stdout.readline()
    p.stdout.close()                                # `| head -1`
    err = p.stderr.read()
    assert p.wait(60) == 0 and json.loads(first)["ip"] == "198.51.100.1"
    assert err == b"", err


def test_non_ascii_in_an_rfc5424_stamp_is_a_line_without_time(tmp_path):
    line = ("<34>1 2026-11-20T10:00:{s}Z mx postfix/smtpd 123 - - NOQUEUE: reject: RCPT from unknown[198.51.100.9]: "
            "454 4.7.1 <a@example.net>: Relay access denied; from=<b@example.org> to=<a@example.net> proto=SMTP helo=<x>\n")
    log = tmp_path / "5424.log"
    log.write_bytes(line.format(s="\xe9").encode("latin-1") + line.format(s="\u00e901").encode() + line.format(s="01").encode())
    r = run_logban("scan", "--json", str(log))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["lines"] == 3 and rep["offences"] == 1


def test_non_ascii_in_an_rfc5424_stamp_does_not_stop_the_daemon(tmp_path):
    """The same bytes in a followed log: the daemon reads past them and bans on the next line."""
    from daemonproc import Daemon, append, dnsbl
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path / "d", "--follow", str(log))
    d.start()
    try:
        bad = ("<34>1 2026-11-20T10:00:\xe9Z mx postfix/smtpd 123 - - NOQUEUE: reject: RCPT from unknown[198.51.100.9]: "
               "554 5.7.1 Service unavailable; Client host [198.51.100.9] blocked using zen.spamhaus.org; "
               "from=<a@b.example> to=<c@d.example> proto=ESMTP helo=<x>\n")
        with open(log, "ab") as f:
            f.write(bad.encode("latin-1") + b"<34>1 \xff\xfe\xc3( mx postfix/smtpd 1 - - x\n")
        append(log, dnsbl("198.51.100.10"))
        assert "198.51.100.10" in d.wait_log("ban 198.51.100.10")
        assert d.p.poll() is None and not any("Traceback" in ln or "Error" in ln for ln in d.lines), "".join(d.lines)
    finally:
        assert d.stop() == 0


@pytest.mark.parametrize("kind, why", [("dir", "is a directory"), ("fifo", "not a regular file"),
                                        ("gz", "compressed")])
def test_run_refuses_what_it_cannot_follow(tmp_path, kind, why):
    target = tmp_path / {"dir": "logs", "fifo": "pipe", "gz": "mail.log.1.gz"}[kind]
    if kind == "dir":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    cfg = tmp_path / "logban.toml"                  # a pid file of its own, should the daemon start
    cfg.write_text(f'[daemon]\npid_file = "{tmp_path}/run/logban.pid"\n')
    r = run_logban("-c", str(cfg), "--db", store(tmp_path), "run", "--follow", str(target), timeout=30)
    assert r.returncode == 2 and why in one_line(r) and str(target) in r.stderr.decode()


def test_run_refuses_a_log_it_may_not_read(public_tmp):
    log = public_tmp / "mail.log"
    log.write_text("x\n")
    log.chmod(0o600)                                # root's; the daemon runs as nobody
    (public_tmp / "db").mkdir()
    (public_tmp / "db").chmod(0o777)
    run = public_tmp / "run"                        # a pid directory of its own, should the daemon start
    run.mkdir(mode=0o700)
    os.chown(run, 65534, 65534)
    r = run_logban("--db", f"sqlite:///{public_tmp}/db/x.db", "run", "--follow", str(log),
                   env={"XDG_RUNTIME_DIR": str(run)}, prefix=as_nobody(public_tmp), timeout=30)
    assert r.returncode == 2 and "permission denied" in one_line(r) and str(log) in r.stderr.decode()


def test_huge_count_is_a_usage_error(tmp_path):
    r = run_logban("--db", store(tmp_path), "show", "--offences", "999999999999999999999", "198.51.100.7")
    assert r.returncode == 2 and "--offences" in one_line(r)


def test_export_to_a_directory_or_a_missing_one_creates_nothing(tmp_path):
    db = store(tmp_path)
    assert run_logban("--db", db, "ban", "198.51.100.7").returncode == 0
    r = run_logban("--db", db, "export", "--format", "plain", "-o", str(tmp_path))
    assert r.returncode == 2 and one_line(r) == f"logban: {tmp_path}: is a directory; name the file to write\n"
    assert not list(tmp_path.glob(".*"))                    # no temporary file left
    r = run_logban("--db", db, "export", "--format", "plain", "-o", str(tmp_path / "typo" / "dir" / "f"))
    assert r.returncode == 2 and "no such directory" in one_line(r)
    assert not (tmp_path / "typo").exists()


def test_export_where_the_user_may_not_write_is_one_line(public_tmp):
    locked = public_tmp / "postfix"
    locked.mkdir(mode=0o755)                        # root's, like /etc/postfix
    db = public_tmp / "db"
    db.mkdir()
    db.chmod(0o777)
    url = f"sqlite:///{db}/x.db"
    assert run_logban("--db", url, "ban", "198.51.100.7", prefix=as_nobody(public_tmp)).returncode == 0
    r = run_logban("--db", url, "export", "--format", "postfix", "-o", str(locked / "logban.cidr"),
                   prefix=as_nobody(public_tmp))
    # The file named, not the temporary file beside it that could not be made, and no exception's type.
    assert r.returncode == 1 and one_line(r) == f"logban: {locked}/logban.cidr: cannot write: Permission denied\n"
    assert not list(locked.iterdir())


def test_sendmail_export_without_makemap_writes_nothing_and_fails(tmp_path):
    db = store(tmp_path)
    assert run_logban("--db", db, "ban", "198.51.100.7").returncode == 0
    bin_dir = tmp_path / "bin"                      # a PATH without makemap
    bin_dir.mkdir()
    out = tmp_path / "access"
    r = run_logban("--db", db, "export", "--format", "sendmail", "-o", str(out), env={"PATH": str(bin_dir)})
    assert r.returncode == 1 and "makemap" in one_line(r) and "written" not in r.stderr.decode().replace("nothing written", "")
    assert not out.exists()


@pytest.mark.parametrize("broken", ["tables", "bans"])
def test_malformed_database_is_one_line(tmp_path, broken):
    """Found at open (the schema version is unreadable), or only by a command's own query
    (the bans table alone is garbage): one line naming the store, no SQL, either way."""
    db = tmp_path / "logban.db"
    assert run_logban("--db", f"sqlite:///{db}", "scan", "--apply", "--dry-run", str(SAMPLES / "logs")).returncode == 0
    with sqlite3.connect(db) as con:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        bans_page = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'bans'").fetchone()[0]
    con.close()
    data = bytearray(db.read_bytes())
    if broken == "tables":
        data[page_size * 2:] = b"\xff" * (len(data) - page_size * 2)     # the schema page stays, the tables are garbage
    else:
        data[(bans_page - 1) * page_size:bans_page * page_size] = b"\xff" * page_size
    db.write_bytes(bytes(data))
    for cmd in (["list", "--all"], ["stats"], ["ban", "203.0.113.5"]):
        r = run_logban("--db", f"sqlite:///{db}", *cmd)
        assert r.returncode == 1 and one_line(r).startswith(f"logban: {db}: ") and "SQL" not in r.stderr.decode(), cmd
        assert "malformed" in r.stderr.decode() and ("cannot open the database" in r.stderr.decode()) == (broken == "tables")


def test_db_in_a_missing_directory_creates_nothing(tmp_path):
    """A --db typo is bad usage (exit 2, one line), as a typo in any other argument is."""
    r = run_logban("--db", f"sqlite:///{tmp_path}/typo/x.db", "ban", "198.51.100.7")
    assert r.returncode == 2 and "no such directory" in one_line(r)
    assert not (tmp_path / "typo").exists()
    r = run_logban("--db", str(tmp_path / "x.db"), "list")             # a path, not a URL
    assert r.returncode == 2 and "is not a database URL (like sqlite:////" in one_line(r)
    r = run_logban("--db", f"sqlite:///{tmp_path}", "list")
    assert r.returncode == 2 and "is a directory, not a database file" in one_line(r)


def test_default_store_is_0600_in_a_0700_directory(public_tmp):
    """logban's own state directory is the one it makes: 0700, the store in it 0600."""
    xdg = public_tmp / "xdg"
    xdg.mkdir()
    xdg.chmod(0o777)
    r = run_logban("ban", "198.51.100.7", env={"XDG_STATE_HOME": str(xdg)}, prefix=as_nobody(public_tmp))
    assert r.returncode == 0, r.stderr
    d = xdg / "logban"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid != 0
    assert stat.S_IMODE((d / "logban.db").stat().st_mode) == 0o600


def test_new_store_files_are_0600(tmp_path):
    d = tmp_path / "state"
    d.mkdir()
    db = d / "logban.db"
    assert run_logban("--db", f"sqlite:///{db}", "ban", "198.51.100.7").returncode == 0
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    con = sqlite3.connect(db)                      # SQLite gives -wal and -shm the database's mode
    con.execute("INSERT INTO meta VALUES ('probe', 'x')")
    con.commit()
    try:
        for side in ("-wal", "-shm"):
            assert stat.S_IMODE(Path(f"{db}{side}").stat().st_mode) == 0o600, side
    finally:
        con.close()


# ---- the command line ----------------------------------------------------------------------

def test_global_options_anywhere_on_the_line(tmp_path):
    db = store(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[ban]\n")
    assert run_logban("ban", "198.51.100.7", "--db", db, "-c", str(cfg)).returncode == 0
    for cmd in (["list", "--db", db], ["firewall", "status", "--db", db, "--backend", "none"],
                ["firewall", "--db", db, "status"], ["rules", "check", "-c", str(cfg)]):
        r = run_logban(*cmd)
        assert r.returncode == 0, (cmd, r.stderr)
    assert b"198.51.100.7" in run_logban("list", "--db", db).stdout
    r = run_logban("--db", str(tmp_path / "other.db"), "list", "--db", db)    # after the command: it wins
    assert b"198.51.100.7" in r.stdout


def test_help_states_exit_statuses_and_every_option_and_examples():
    r = run_logban("--help")
    assert r.returncode == 0 and b"exit status" in r.stdout and b"LOGBAN_DEBUG" in r.stdout
    import argparse

    from logban.cli.args import build_parser
    ap = build_parser()

    def walk(p: argparse.ArgumentParser, name: str):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub_name, sub in a.choices.items():
                    yield from walk(sub, f"{name} {sub_name}")
            elif not isinstance(a, argparse._HelpAction) and a.dest != "version":
                assert a.help, f"{name}: {a.option_strings or a.dest} has no help text"
        if name != "logban" and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions):
            yield name, p

    leaves = list(walk(ap, "logban"))
    assert len(leaves) >= 14
    for name, p in leaves:
        assert "examples:" in (p.epilog or ""), name
        assert 2 <= p.epilog.count("\n  logban") + p.epilog.count("\n  sudo") <= 3, name
    assert b"examples:" in run_logban("show", "--help").stdout


def test_an_unknown_option_points_at_its_command_help():
    """`logban list --jsn` is the list command's typo: its help is the one to read."""
    for args, helps in ((["list", "--jsn"], "logban list --help"), (["allow", "add", "x.example", "y"], "logban allow add --help"),
                        (["--jsn", "stats"], "logban stats --help"), (["lsit"], "logban --help")):
        r = run_logban(*args)
        assert r.returncode == 2 and one_line(r).endswith(f"(see '{helps}')\n"), (args, r.stderr)


@pytest.mark.parametrize("target, why", [("198.51.100.7/24", "198.51.100.0/24"), ("10.0.0.0/8", "--force"),
                                         ("2001:db8::/32", "--force"), ("0.0.0.0/0", "not a ban target")])
def test_manual_ban_is_strict_and_wide_ones_need_force(tmp_path, target, why):
    r = run_logban("--db", store(tmp_path), "ban", target)
    assert r.returncode == 2 and why in one_line(r)
    assert b"[]" in run_logban("--db", store(tmp_path), "list", "--json").stdout


def test_wide_ban_with_force_and_json_results(tmp_path):
    db = store(tmp_path)
    r = run_logban("--db", db, "ban", "--force", "--json", "10.0.0.0/8", "--for", "1h")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["target"] == "10.0.0.0/8" and got["kind"] == "manual" and "firewall" in got
    r = run_logban("--db", db, "ban", "--json", "2001:db8:8000::/33")      # narrower than /32: no --force
    assert r.returncode == 0 and json.loads(r.stdout)["target"] == "2001:db8:8000::/33", r.stderr
    r = run_logban("--db", db, "unban", "--json", "10.1.2.3", "198.51.100.9")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert [u["lifted"] for u in got["unbanned"]] == [["10.0.0.0/8"], []]
    r = run_logban("rules", "check", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True and json.loads(r.stdout)["tests"] > 0
    r = run_logban("test-rules", "--json", str(GOOD))
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["offences"] > 0 and any(x["hits"] for x in rep["rules"])


def test_rule_and_config_messages_name_what_is_wrong(tmp_path):
    r = run_logban("rules", "check", str(GOOD))
    assert r.returncode == 2 and "is a file, not a rule pack directory" in one_line(r)
    cfg = tmp_path / "logban.toml"
    cfg.write_text('[rules]\ndisable = ["no-such-rule"]\n')
    r = run_logban("-c", str(cfg), "rules", "check")
    assert r.returncode == 2 and f"{cfg}: rules.disable: no rule with id 'no-such-rule'" in one_line(r)
    cfg.write_text("[score]\nthreshhold = 3\n")
    r = run_logban("-c", str(cfg), "list")
    assert r.returncode == 2 and "unknown key score.threshhold (" in one_line(r)


# ---- polish --------------------------------------------------------------------------------

def test_kinds_column_is_bounded_and_the_top_table_has_a_header():
    from logban.report import KINDS_WIDTH, top_table
    kinds = [(k, 9 - i) for i, k in enumerate(("relay_denied", "unknown_user", "dnsbl", "bad_helo", "bad_sender",
                                               "auth_failed", "pregreet", "protocol_abuse", "client_rejected"))]
    head, row = top_table([("198.51.100.7", 45, 0.0, 60.0, kinds)])
    assert head.split() == ["address", "count", "first", "seen", "(UTC)", "last", "seen", "(UTC)", "kinds"]
    cell = row[row.index("relay_denied"):]
    assert len(cell) <= KINDS_WIDTH and cell.endswith("more") and row.index("relay_denied") == head.index("kinds")


def test_stats_header_since_wording_and_skipped_explained(tmp_path):
    db = store(tmp_path)
    assert run_logban("--db", db, "scan", "--apply", "--dry-run", str(SAMPLES / "logs")).returncode == 0
    assert run_logban("--db", db, "ban", "198.51.100.7", "--for", "1d").returncode == 0
    r = run_logban("--db", db, "stats")
    assert re.search(rb"\n  address +count +first seen \(UTC\) +last seen \(UTC\) +kinds\n", r.stdout), r.stdout
    time.sleep(1.2)
    r = run_logban("--db", db, "stats", "--since", "1s")
    assert b"Bans made in the last 1s: 0 (" in r.stdout and b"active now: 1." in r.stdout, r.stdout
    r = run_logban("scan", str(SAMPLES / "logs"))
    assert b"offences whose session never named a client (their line names a queue id or pid" in r.stdout
    assert "skipped.unresolved" in (ROOT / "README.md").read_text()


def test_scan_apply_again_reports_the_lines_it_does_not_apply_again(tmp_path):
    db = store(tmp_path)
    first = run_logban("--db", db, "scan", "--apply", "--dry-run", "--json", str(SAMPLES / "logs"))
    assert first.returncode == 0 and json.loads(first.stdout)["applied"]["offences"] > 0
    again = run_logban("--db", db, "scan", "--apply", "--dry-run", "--json", str(SAMPLES / "logs"))
    assert again.returncode == 0 and b"were not applied again" in again.stderr
    a, b = json.loads(first.stdout), json.loads(again.stdout)
    assert b["applied"]["offences"] == 0 and b["offences"] == a["offences"] and b["by_kind"] == a["by_kind"]
    r = run_logban("--db", db, "scan", "--apply", "--dry-run", str(SAMPLES / "logs"))
    assert b"Top 10 offenders:" in r.stdout


def test_config_that_cannot_be_read_is_one_line(tmp_path, public_tmp):
    r = run_logban("-c", str(tmp_path), "list")
    assert r.returncode == 2 and one_line(r) == f"logban: {tmp_path}: cannot read config: is a directory\n"
    cfg = public_tmp / "logban.toml"
    cfg.write_text("[ban]\n")
    cfg.chmod(0o600)                                # root's
    r = run_logban("-c", str(cfg), "list", prefix=as_nobody(public_tmp))
    assert r.returncode == 2 and one_line(r) == f"logban: {cfg}: cannot read config: permission denied\n"
