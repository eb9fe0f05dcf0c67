"""Safe decisions, end to end with the real `logban` process: allow-listed, loopback and own
clients are never offenders in reports; attacker-written text never reaches the terminal raw;
`ban` refuses what can never be a ban target."""
import ipaddress
import json
import re
import time

import pytest
from conftest import bsd_stamp, touch_now

from logban.allow import host_addresses


def stamp(s: int) -> str:
    """An hour ago plus `s` seconds: recorded offences stay inside the retention on any date."""
    return bsd_stamp(int(time.time()) - 3600 + s)


def _own_address() -> str | None:
    """One of this host's own addresses that is neither loopback nor link-local (if it has one)."""
    for a in sorted(host_addresses()):
        ip = ipaddress.ip_address(a)
        if not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified):
            return a
    return None


def _relay(ip: str) -> str:
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def sendmail_log(path, own: str | None):
    """Local cron mail from localhost, a partner in [allow] addresses, a delivery farm host
    whose verified name [allow] hostnames covers, this host itself, and two real attackers
    (one claims a farm name, but sendmail says it may be forged: not verified)."""
    lines = []
    for i in range(1, 4):        # 3 x "User unknown" for relay=localhost [127.0.0.1]
        lines += [f"{stamp(i)} mx sm-mta[200{i}]: 4AKA000000000{i}: <nobody@mx.example.com>... User unknown",
                  f"{stamp(i)} mx sm-mta[200{i}]: 4AKA000000000{i}: from=<root@mx.example.com>, size=0, "
                  "class=0, nrcpts=0, proto=ESMTP, daemon=MTA, relay=localhost [127.0.0.1]"]
    denied = ("{t} mx sm-mta[30{s:02d}]: 4AKB00000000{s:02d}: ruleset=check_rcpt, arg1=<x@example.net>, "
              "relay={relay}, reject=550 5.7.1 <x@example.net>... Relaying denied")
    clients = ["partner.example.org [198.51.100.2]",                        # [allow] addresses
               "out-7.mailout.example.com [203.0.113.9]",                   # [allow] hostnames, verified
               "bot.example.biz [192.0.2.66] (may be forged)",              # attacker
               "bot.example.biz [192.0.2.66] (may be forged)",
               "out-8.mailout.example.com [192.0.2.67] (may be forged)"]    # attacker, name not verified
    if own:
        clients.append(f"mx.example.com {_relay(own)}")                     # this host itself
    lines += [denied.format(t=stamp(60 + s), s=s, relay=c) for s, c in enumerate(clients)]
    path.write_text("\n".join(lines) + "\n")
    touch_now(path)
    return path, 3 + 2 + (1 if own else 0)


@pytest.fixture
def allow_config(tmp_path):
    cfg = tmp_path / "logban.toml"
    cfg.write_text('[allow]\naddresses = ["198.51.100.0/28"]\nhostnames = ["*.mailout.example.com"]\n')
    return cfg


def test_scan_counts_allow_listed_loopback_and_own_clients_apart(logban, tmp_path, allow_config):
    own = _own_address()
    log, ignored = sendmail_log(tmp_path / "maillog", own)
    c = ("-c", str(allow_config))

    r = logban(*c, "scan", "--json", str(log))
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert [(t["ip"], t["count"]) for t in rep["top"]] == [("192.0.2.66", 2), ("192.0.2.67", 1)]
    assert rep["offences"] == 3 and rep["by_kind"] == {"relay_denied": 3} and rep["addresses"] == 2
    assert rep["ignored"] == {"allow_listed": ignored}

    r = logban(*c, "scan", str(log))
    out = r.stdout.decode()
    assert r.returncode == 0 and f"Ignored: allow-listed {ignored} " in out
    assert "192.0.2.66" in out and "192.0.2.67" in out
    assert "Offences: 3 from 2 address(es)." in out
    for quiet in ("127.0.0.1", "198.51.100.2", "203.0.113.9", "unknown_user", *([own] if own else [])):
        assert quiet not in out, quiet

    r = logban(*c, "scan", "--events", str(log))
    assert r.returncode == 0
    assert [e["ip"] for e in map(json.loads, r.stdout.decode().splitlines())] == \
        ["192.0.2.66", "192.0.2.66", "192.0.2.67"]


def test_stats_leaves_allow_listed_clients_out_of_the_top(logban, tmp_path, allow_config):
    log, _ = sendmail_log(tmp_path / "maillog", None)
    c = ("-c", str(allow_config), "--db", f"sqlite:///{tmp_path / 'logban.db'}")
    r = logban(*c, "scan", "--apply", str(log))
    assert r.returncode == 0, r.stderr
    st = json.loads(logban(*c, "stats", "--json", "--top", "2").stdout)
    assert [t["ip"] for t in st["top"]] == ["192.0.2.66", "192.0.2.67"]
    # 127.0.0.1 (3) would rank first by count: its offences are not even recorded.
    assert st["ignored"]["allow_listed_top"] == [] and st["offences"] == 3
    assert [t["ip"] for t in json.loads(logban(*c, "stats", "--json", "--top", "1").stdout)["top"]] == ["192.0.2.66"]
    out = logban(*c, "stats").stdout.decode()
    top = out.split("offenders:")[1].split("\n\n")[0]
    assert "192.0.2.66" in top and "127.0.0.1" not in out


# ---- terminal safety ---------------------------------------------------------------------

EVIL = b"\x1b[2J\x1b]0;owned\x07\xc2\x9b31m\xff\x7f\xe2\x80\xae"     # ESC, OSC+BEL, C1 CSI, bad UTF-8, DEL, RLO


def assert_terminal_safe(out: bytes):
    """Nothing a terminal acts on: no C0 but newline, no DEL, no C1 (as UTF-8), no bidi override."""
    bad = re.findall(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]", out)
    assert not bad, (bad, out[:2000])
    out.decode("utf-8")             # and valid UTF-8 throughout


def evil_log(path, ip="192.0.2.5", n=3):
    line = (b"%s mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[" + ip.encode()
            + b"]: 550 5.1.1 <" + EVIL + b"caf\xc3\xa9@example.com>: Recipient address rejected: User unknown "
            b"in local recipient table; from=<a@example.org> to=<u@example.com> proto=ESMTP helo=<" + EVIL + b">\n")
    suspicious = stamp(9).encode() + b" mx postfix/smtpd[1]: warning: " + EVIL + b" illegal address\n"
    path.write_bytes(b"".join(line % stamp(i).encode() for i in range(n)) + suspicious)
    touch_now(path)
    return path


def test_test_rules_escapes_control_characters(logban, tmp_path):
    r = logban("test-rules", str(evil_log(tmp_path / "mail.log")))
    assert r.returncode == 0, r.stderr
    assert_terminal_safe(r.stdout)
    out = r.stdout.decode()
    # shown, escaped; ordinary UTF-8 kept; the invalid byte as \xff, the C1 character as \u009b
    assert "<\\x1b[2J\\x1b]0;owned\\x07\\u009b31m\\xff\\x7f\\u202ecafé@example.com>" in out
    assert "warning: \\x1b[2J" in out            # the suspicious line too


def test_show_list_stats_and_json_escape_control_characters(logban, tmp_path):
    c = ("--db", f"sqlite:///{tmp_path / 'logban.db'}")
    log = evil_log(tmp_path / "mail.log", n=4)
    assert logban(*c, "scan", "--apply", str(log)).returncode == 0
    r = logban(*c, "ban", "198.51.100.9", "--reason", "copied from a log: " + EVIL.decode("utf-8", "replace"))
    assert r.returncode == 0, r.stderr
    for cmd in (["show", "192.0.2.5"], ["show", "198.51.100.9"], ["list", "--all"], ["stats"]):
        r = logban(*c, *cmd)
        assert r.returncode == 0, (cmd, r.stderr)
        assert_terminal_safe(r.stdout)
    assert "\\x1b[2J" in logban(*c, "show", "192.0.2.5").stdout.decode()
    assert "copied from a log: \\x1b[2J" in logban(*c, "list").stdout.decode()
    # JSON escapes everything itself (C1 and DEL too), and the text comes back intact.
    for cmd in (["show", "--json", "192.0.2.5"], ["list", "--json"], ["stats", "--json"]):
        r = logban(*c, *cmd)
        assert_terminal_safe(r.stdout)
        json.loads(r.stdout)
    text = json.loads(logban(*c, "show", "--json", "192.0.2.5").stdout)["offences"]["recent"][0]["text"]
    assert "\x1b[2J\x1b]0;owned\x07\x9b31m" in text


def test_file_names_with_control_characters_are_escaped(logban, tmp_path):
    import gzip
    good = b"Nov 20 01:00:00 mx postfix/smtpd[1]: lost connection after AUTH from unknown[192.0.2.5]\n"
    broken = tmp_path / "mail\x1b]0;owned\x07.log.1.gz"
    broken.write_bytes(gzip.compress(good * 1000)[:-40])
    r = logban("scan", str(broken))
    assert r.returncode == 1
    assert_terminal_safe(r.stdout)
    assert_terminal_safe(r.stderr)
    assert b"mail\\x1b]0;owned\\x07.log.1.gz" in r.stderr and b"mail\\x1b]0;owned\\x07.log.1.gz" in r.stdout
    r = logban("scan", "--events", str(broken))
    assert_terminal_safe(r.stdout)
    assert_terminal_safe(r.stderr)


def test_a_usage_error_naming_attacker_text_is_escaped(logban):
    r = logban("show", "\x1b]0;owned\x07\u009b")
    assert r.returncode == 2 and r.stderr.count(b"\n") == 1
    assert_terminal_safe(r.stderr)


# ---- ban targets -------------------------------------------------------------------------

NEVER_TARGETS = [
    "::/64", "::", "::1", "ff02::1", "ff00::/8", "224.0.0.0/4", "239.1.2.3", "fe80::1", "fe80::/64",
    "::192.0.2.1", "::ffff:0:0/96", "0.0.0.0", "0.0.0.0/0", "::/0", "0.1.2.3", "255.255.255.255",
    "169.254.1.1", "127.0.0.2", "192.0.2.1/24", "fe80::1%eth0", "192.0.2.1 ", " 192.0.2.1", "192.0.2.1\n",
    "IPv6:2001:db8::1", "2001:db8::1/129", "1.2.3", "0x7f.1", "2001:db8::1/64",
]


def test_ban_refuses_what_can_never_be_a_ban_target(logban, tmp_path):
    c = ("--db", f"sqlite:///{tmp_path / 'logban.db'}")
    for t in NEVER_TARGETS:
        r = logban(*c, "ban", t)
        assert r.returncode == 2, (t, r.stdout, r.stderr)
        err = r.stderr.decode()
        assert err.count("\n") == 1 and "Traceback" not in err and "not a ban target" in err, (t, err)
        assert repr(t) in err, (t, err)          # names the target as given
    assert json.loads(logban(*c, "list", "--all", "--json").stdout) == []
    for why, t in (("loopback", "127.0.0.2"), ("multicast", "ff02::1"), ("link-local", "fe80::1"),
                   ("IPv4-compatible", "::192.0.2.1"), ("host bits", "192.0.2.1/24")):
        assert why in logban(*c, "ban", t).stderr.decode(), t


def test_ban_takes_canonical_targets_and_unban_show_take_anything_parseable(logban, tmp_path):
    c = ("--db", f"sqlite:///{tmp_path / 'logban.db'}")
    for t in ("2001:DB8::7", "::ffff:198.51.100.7", "203.0.113.0/24"):
        assert logban(*c, "ban", t).returncode == 0, t
    got = {b["target"] for b in json.loads(logban(*c, "list", "--json").stdout)}
    assert got == {"2001:db8::7", "198.51.100.7", "203.0.113.0/24"}
    # unban and show still read any parseable spelling (a bad row can still be removed)
    for cmd in ("unban", "show"):
        for t in ("fe80::1", "::192.0.2.1", "ff02::1", "192.0.2.1/24"):
            r = logban(*c, cmd, t)
            assert r.returncode == 0, (cmd, t, r.stderr)


def _add_rows(db_file, template: str, targets):
    """Rows a buggy or hostile writer could have left in the store: copies of a real ban."""
    import sqlite3
    con = sqlite3.connect(db_file)
    cols = [r[1] for r in con.execute("PRAGMA table_info(bans)") if r[1] not in ("id", "target")]
    for t in targets:
        con.execute(f"INSERT INTO bans (target, {', '.join(cols)}) SELECT ?, {', '.join(cols)} FROM bans "
                    "WHERE target = ?", (t, template))
    con.commit()
    con.close()


def test_bad_rows_in_the_store_can_still_be_shown_listed_and_unbanned(logban, tmp_path):
    db_file = tmp_path / "logban.db"
    c = ("--db", f"sqlite:///{db_file}")
    assert logban(*c, "ban", "198.51.100.9", "--reason", "spam").returncode == 0
    _add_rows(db_file, "198.51.100.9", ["fe80::1", "ff02::1", "not-an-ip\x1b[2J", "192.0.2.1/24"])
    r = logban(*c, "list")
    assert r.returncode == 0, r.stderr
    assert_terminal_safe(r.stdout)
    assert "not-an-ip\\x1b[2J" in r.stdout.decode()
    for t in ("192.0.2.7", "fe80::1"):
        r = logban(*c, "show", t)
        assert r.returncode == 0, (t, r.stderr)
        assert_terminal_safe(r.stdout)
    r = logban(*c, "unban", "fe80::1", "ff02::1", "192.0.2.1/24")
    assert r.returncode == 0, r.stderr
    assert "lifted fe80::1" in r.stdout.decode() and "lifted 192.0.2.1/24" in r.stdout.decode()
    left = {b["target"] for b in json.loads(logban(*c, "list", "--json").stdout)}
    assert left == {"198.51.100.9", "not-an-ip\x1b[2J"}
    r = logban(*c, "unban", "--all")                 # the bulk form prints each row's target too
    assert r.returncode == 0, r.stderr
    assert_terminal_safe(r.stdout)
    assert "not-an-ip\\x1b[2J" in r.stdout.decode()


@pytest.mark.parametrize("value", ["x'00ff41'", "CAST(x'ff41' AS TEXT)", "12345"],
                         ids=["blob", "invalid-utf8", "number"])
def test_text_columns_holding_bytes_or_numbers_stop_no_command(logban, tmp_path, value):
    """SQLite keeps a BLOB, invalid UTF-8 or a number written into a text column; pysqlite
    then failed every query reading the row ("Could not decode to UTF-8 column") or handed
    bytes to the JSON writer: list, show, export and unban died, and the daemon would not
    start. Each text column of a ban row is read as text whatever it holds."""
    import sqlite3
    db_file = tmp_path / "logban.db"
    c = ("--db", f"sqlite:///{db_file}")
    assert logban(*c, "ban", "198.51.100.9", "--reason", "spam").returncode == 0
    con = sqlite3.connect(db_file)
    cols = [r[1] for r in con.execute("PRAGMA table_info(bans)") if r[1] != "id"]
    texts = ("kind", "rule", "reason", "release_reason", "node", "source", "members", "text")
    for i, col in enumerate(texts):
        sel = [value if k == col else (f"'198.51.100.{20 + i}'" if k == "target" else k) for k in cols]
        con.execute(f"INSERT INTO bans ({', '.join(cols)}) SELECT {', '.join(sel)} FROM bans WHERE target = '198.51.100.9'")
    con.commit()
    con.close()
    for cmd in (("list", "--json"), ("list", "--all"), ("show", "198.51.100.20"), ("stats", "--json"),
                ("export", "--format", "json"), ("export", "--format", "rbldnsd"), ("report", "--format", "text")):
        r = logban(*c, *cmd)
        assert r.returncode == 0, (cmd, r.stderr)
        assert_terminal_safe(r.stdout)
    assert len(json.loads(logban(*c, "list", "--json").stdout)) == 1 + len(texts)
    r = logban(*c, "unban", "--all")
    assert r.returncode == 0, r.stderr
    assert json.loads(logban(*c, "list", "--json").stdout) == []
