"""`logban report`: the real command on a store filled by the real `scan --apply --dry-run`,
its page opened in a real headless Chromium."""
from __future__ import annotations

import re
import time

from conftest import bsd_stamp, run_logban, touch_now

from logban.allow import AllowList
from logban.digest.collect import bucket_for, collect
from logban.digest.text import bars
from logban.parse import Offence
from logban.score import Decision
from logban.store import Store

HOSTILE = "<script>alert(\"x\")&'</script>.example"
HOUR = 3600


def _postfix(t: float, ip: str, what: str, name: str = "unknown") -> str:
    head = f"{bsd_stamp(t, utc=True)} mx postfix/smtpd[7]: NOQUEUE: reject: RCPT from {name}[{ip}]: "
    return head + {
        "unknown_user": "550 5.1.1 <ann@example.com>: Recipient address rejected: User unknown in local recipient "
                        "table; from=<x@example.biz> to=<ann@example.com> proto=ESMTP helo=<bot>",
        "relay_denied": "554 5.7.1 <spam@example.net>: Relay access denied; from=<a@example.org> "
                        "to=<spam@example.net> proto=ESMTP helo=<x>",
        "dnsbl": f"554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; "
                 "from=<a@b.example> to=<c@d.example> proto=ESMTP helo=<x>",
    }[what] + "\n"


def _sendmail(t: float, ip: str) -> str:
    return (f"{bsd_stamp(t, utc=True)} mx sm-mta[2001]: 4AKA0001234567: ruleset=check_rcpt, arg1=<spam@example.net>, "
            f"relay=[{ip}], reject=550 5.7.1 <spam@example.net>... Relaying denied\n")


def _logs(tmp_path, now: float):
    """Two nodes' logs over the last three days, and what the report must count of them."""
    mx1 = []
    for h in range(0, 72, 6):                                   # a dictionary attack from one /24
        for i in range(10, 15):
            mx1.append(_postfix(now - (h + 1) * HOUR - i * 60, f"198.51.100.{i}", "unknown_user"))
    for h in (2, 5, 30, 31):                                    # the top offender: a hostile verified name
        for k in range(5):
            mx1.append(_postfix(now - h * HOUR - k * 30, "198.51.100.9", "relay_denied", HOSTILE))
    mx1 += [_postfix(now - 50 * HOUR, "203.0.113.5", "dnsbl"),    # banned, and banned again: escalated
            _postfix(now - 20 * HOUR, "203.0.113.5", "dnsbl")]
    mx1 += [_postfix(now - h * HOUR, f"2001:db8:5::{h}", "relay_denied") for h in (3, 4, 40)]
    mx1 += [_postfix(now - h * HOUR, "203.0.113.200", "unknown_user", "relay.partner.example") for h in (1, 9, 12)]
    mx1.sort(key=lambda ln: time.mktime(time.strptime(ln[:15], "%b %d %H:%M:%S")))
    # Outside --since 7d: a client seen only then, and one of the attackers seen before too.
    old = [_postfix(now - 10 * 86400, "198.51.100.99", "dnsbl"), _postfix(now - 9 * 86400, "198.51.100.10", "relay_denied")]
    mx2 = [_sendmail(now - h * HOUR, "203.0.113.77") for h in (6, 7, 8)]
    a, b = tmp_path / "mx1.log", tmp_path / "mx2.log"
    a.write_text("".join(old + mx1))
    b.write_text("".join(mx2))
    touch_now(a, b)
    return a, b, len(mx1) + len(mx2)


def test_report_of_a_scanned_store_in_headless_chromium(tmp_path):
    now = time.time()
    mx1, mx2, expected = _logs(tmp_path, now)
    cfg = tmp_path / "logban.toml"
    cfg.write_text('[parse]\ntimezone = "UTC"\n')
    db = ["-c", str(cfg), "--db", f"sqlite:///{tmp_path}/s.db"]
    for node, log in (("mx1", mx1), ("mx2", mx2)):
        r = run_logban(*db, "scan", "--apply", "--dry-run", "--node", node, str(log))
        assert r.returncode == 0, r.stderr
    # A partner allow-listed after the fact: its offences are recorded, and now counted as allow-list hits.
    cfg.write_text('[parse]\ntimezone = "UTC"\n[allow]\naddresses = ["203.0.113.200"]\n')

    r = run_logban(*db, "report", "--format", "text")          # default: the last 7 days
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    head = dict(re.findall(r"^(lines read, 2 files|offences|allow-list hits|escalations) +([\d,]+)", text,
                           re.MULTILINE))
    assert head["offences"] == f"{expected:,}"                  # the old line is out of the period
    assert head["lines read, 2 files"] == f"{expected + 2:,}"            # what the read positions stand at
    assert head["allow-list hits"] == "3" and int(head["escalations"]) >= 1
    assert "198.51.100.99" not in text
    assert re.search(r"^  198\.51\.100\.9 +20 ", text, re.MULTILINE)       # the top offender, first
    offenders, allowed = text.split("\nAllow-list hits\n")
    assert "203.0.113.200" not in offenders and re.search(r"^  203\.0\.113\.200 +3 ", allowed, re.MULTILINE)
    assert re.search(r"^  198\.51\.100\.10 +12 .* relay_denied, unknown_user$", text, re.MULTILINE)   # old one out
    assert re.search(r"^  198\.51\.100\.0/24 +80 +6$", text, re.MULTILINE)
    assert re.search(r"^  2001:db8:5::/64 +3 +1$", text, re.MULTILINE)
    assert re.search(r"^  mx2 +3 ", text, re.MULTILINE) and "sendmail-relaying-denied" in text
    assert HOSTILE in text                                       # text: shown as it is (no control characters)

    r = run_logban(*db, "report", "--format", "text", "--node", "mx2", "--since", "2d")
    assert r.returncode == 0 and re.search(r"^offences +3$", r.stdout.decode(), re.MULTILINE)

    page = tmp_path / "report.html"
    r = run_logban(*db, "report", "-o", str(page), "--since", "7d")
    assert r.returncode == 0 and r.stdout == b"", r.stderr
    html = page.read_text()
    # Self-contained: no URL, no resource from anywhere, no script.
    assert not re.search(r"https?:|//[a-z]|\bsrc=|\bhref=|<script|@import|url\(", html, re.IGNORECASE), \
        re.search(r"https?:|//[a-z]|\bsrc=|\bhref=|<script|@import|url\(", html, re.IGNORECASE)
    assert "&lt;script&gt;alert(&quot;x&quot;)&amp;&#x27;&lt;/script&gt;.example" in html

    from chromium import Browser
    b = Browser(tmp_path / "profile")
    try:
        b.open(page.as_uri(), 1000)
        assert b.problems() == []
        assert b.requests() == [page.as_uri()]                   # nothing fetched but the page
        charts = b.evaluate("""[...document.querySelectorAll('svg.chart')].map(s => ({
            label: s.getAttribute('aria-label'),
            drawn: [...s.querySelectorAll('rect.bar')].filter(r => {
                const x = r.getBoundingClientRect(); return x.width > 0 && x.height > 0; }).length,
            width: s.getBoundingClientRect().width}))""")
        assert [c["label"] for c in charts] == ["offences by kind over time", "bans and releases over time",
                                                "offences by MTA", "offences by node"]
        assert all(c["drawn"] > 0 and c["width"] > 200 for c in charts), charts
        assert b.evaluate("document.scripts.length") == 0
        assert b.evaluate("document.querySelector('td.name').textContent") == HOSTILE
        b.screenshot(tmp_path / "report.png", 1000)
        b.open(page.as_uri(), 390, mobile=True)                  # a phone: nothing wider than the screen
        assert b.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        b.screenshot(tmp_path / "report-phone.png", 390, mobile=True)
    finally:
        b.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_report_refuses_bad_arguments_in_one_line(tmp_path):
    db = ["--db", f"sqlite:///{tmp_path}/s.db"]
    for args, what in ((["--since", "soon"], "--since"), (["--since", "0s"], "--since"),
                       (["--format", "pdf"], "--format"), (["-o", str(tmp_path / "no" / "r.html")], "-o"),
                       (["-o", str(tmp_path)], "is a directory")):
        r = run_logban(*db, "report", *args)
        assert r.returncode == 2 and what in r.stderr.decode() and len(r.stderr.decode().splitlines()) == 1, r.stderr
    r = run_logban(*db, "report", "--format", "text")              # an empty store: a report of nothing
    assert r.returncode == 0 and re.search(r"^offences +0$", r.stdout.decode(), re.MULTILINE)


def test_buckets_and_bars():
    assert bucket_for(86400) == 3600 and bucket_for(7 * 86400) == 3 * 3600
    assert bucket_for(1000 * 86400) == 30 * 86400 and bucket_for(36500 * 86400) == 365 * 86400
    rows = bars({f"k{i}": i for i in range(20)})
    assert len(rows) == 12 and rows[0] == ("k19", 19) and rows[-1] == ("other", sum(range(9)))


def _off(t: float, ip: str, kind: str = "unknown_user", name: str | None = None, mta: str = "postfix") -> Offence:
    return Offence(t, ip, mta, f"{mta}-{kind}", kind, 1.0, "mail.log", 1, b"line", name)


def test_collect_on_sqlite_and_postgresql(db_url):
    """The report's SQL on both stores: clients first seen in the period and clients seen
    before it, one node or all, bans made, escalated and released in the period."""
    now = time.time()
    h0 = (now - 2 * 86400) // HOUR * HOUR                      # the period starts here
    s = Store(db_url)
    s.record([(_off(h0 - 5 * HOUR, "198.51.100.1"), "198.51.100.1"),   # before the period: not counted
              (_off(h0 + HOUR, "198.51.100.1"), "198.51.100.1"),
              (_off(h0 + 2 * HOUR, "198.51.100.1", "dnsbl"), "198.51.100.1"),
              (_off(h0 + 3 * HOUR, "198.51.100.2", name="a.partner.example"), "198.51.100.2"),
              (_off(h0 + 3 * HOUR, "2001:db8::1"), "2001:db8::/64")], [], node="mx1", dry_run=False, now=now)
    s.record([(_off(h0 + 4 * HOUR, "198.51.100.1", mta="sendmail"), "198.51.100.1")],
             [Decision("198.51.100.1", "dnsbl", "postfix-dnsbl", 5, h0 + 2 * HOUR, HOUR, 1, False, "r"),
              Decision("198.51.100.1", "dnsbl", "postfix-dnsbl", 5, h0 + 5 * HOUR, 2 * HOUR, 2, True, "r")],
             node="mx2", dry_run=False, now=now)
    allow = AllowList([], ["*.partner.example"], own=[])
    d = collect(s, allow, since=now - 2 * 86400, until=now)
    assert d.since == h0 and d.offences == 5 and d.clients == 3
    assert d.by_kind == {"unknown_user": 4, "dnsbl": 1} and d.by_node == {"mx1": 4, "mx2": 1}
    assert d.by_mta == {"postfix": 4, "sendmail": 1}
    assert [(o.target, o.count, o.first, o.last, o.kinds, o.bans, o.escalations) for o in d.top] == [
        ("198.51.100.1", 3, h0 + HOUR, h0 + 4 * HOUR, ["dnsbl", "unknown_user"], 2, 1),
        ("2001:db8::/64", 1, h0 + 3 * HOUR, h0 + 3 * HOUR, ["unknown_user"], 0, 0)]
    assert (d.allow_hits, [o.name for o in d.allow_top]) == (1, ["a.partner.example"])
    assert [(n.network, n.count, n.clients) for n in d.networks4] == [("198.51.100.0/24", 3, 1)]
    assert [(n.network, n.count) for n in d.networks6] == [("2001:db8::/64", 1)]
    assert (d.bans_new, d.escalations, d.releases, d.bans_active) == (2, 1, 2, 0)
    assert sum(sum(v.values()) for v in d.kinds_over_time.values()) == 5
    assert sum(b for b, _ in d.bans_over_time.values()) == 2
    one = collect(s, allow, since=now - 2 * 86400, until=now, node="mx2")
    assert one.offences == 1 and [(o.target, o.count) for o in one.top] == [("198.51.100.1", 1)]
    assert one.bans_new == 2
    s.close()
