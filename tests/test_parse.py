"""The parser: headers, time stamps, addresses, correlation, and hostile input."""
import calendar
import ipaddress
import time

import pytest
from conftest import evil_rules, optional_group_rules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logban.allow import unbannable
from logban.parse import Clock, Parser, canonical_ip, iso, not_target, parse_header
from logban.rules import load_rules

RULES = load_rules(own_names=("mx.example.com", "192.0.2.25"))
REF = calendar.timegm((2026, 11, 22, 12, 0, 0))


def parser(**kw) -> Parser:
    return Parser(RULES, clock=Clock("UTC", reference=REF), **kw)


def offences(text: str | bytes, **kw):
    data = text.encode() if isinstance(text, str) else text
    return parser(**kw).parse_lines(data)


# ---- addresses -----------------------------------------------------------

@pytest.mark.parametrize("raw, want", [
    ("192.0.2.1", "192.0.2.1"),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("2001:0db8:0000:0001:0000:0000:0000:0009", "2001:db8:0:1::9"),
    ("::ffff:192.0.2.77", "192.0.2.77"),
    ("::FFFF:C000:024D", "192.0.2.77"),
    ("2001:db8::5%eth0", "2001:db8::5"),
    ("IPv6:2001:db8::110", "2001:db8::110"),
    ("192.0.2.256", None),
    ("01.2.3.4", None),
    ("unknown", None),
])
def test_canonical_ip(raw, want):
    assert canonical_ip(raw) == want


# ---- time stamps ---------------------------------------------------------

def utc(y, mo, d, h, mi, s, frac=0.0):
    return calendar.timegm((y, mo, d, h, mi, s)) + frac


def test_rfc3164_year_is_inferred_from_the_reference():
    jan = Clock("UTC", reference=utc(2027, 1, 5, 0, 0, 0))
    assert parse_header(b"Dec 31 23:59:59 h postfix/smtpd[1]: x", jan).time == utc(2026, 12, 31, 23, 59, 59)
    assert parse_header(b"Jan  4 10:00:00 h postfix/smtpd[1]: x", jan).time == utc(2027, 1, 4, 10, 0, 0)
    # Out of order lines keep their own year.
    assert parse_header(b"Dec 30 08:00:00 h postfix/smtpd[1]: x", jan).time == utc(2026, 12, 30, 8, 0, 0)


def test_rfc3164_in_a_configured_zone_across_dst():
    berlin = Clock("Europe/Berlin", reference=utc(2026, 11, 1, 0, 0, 0))
    assert parse_header(b"Jul  1 12:00:00 h p[1]: x", berlin).time == utc(2026, 7, 1, 10, 0, 0)
    assert parse_header(b"Mar 29 03:30:00 h p[1]: x", berlin).time == utc(2026, 3, 29, 1, 30, 0)
    assert parse_header(b"Mar 29 01:30:00 h p[1]: x", berlin).time == utc(2026, 3, 29, 0, 30, 0)


@pytest.mark.parametrize("line, want", [
    (b"2026-11-20T06:00:01.223456+01:00 mx p[1]: x", utc(2026, 11, 20, 5, 0, 1, 0.223456)),
    (b"2026-11-20T05:00:02Z mx p[1]: x", utc(2026, 11, 20, 5, 0, 2)),
    (b"2026-11-20T05:00:02-0300 mx p[1]: x", utc(2026, 11, 20, 8, 0, 2)),
    (b"<22>1 2026-11-20T05:00:03.5Z mx postfix/postscreen 802 - - x", utc(2026, 11, 20, 5, 0, 3, 0.5)),
    (b"<22>1 2026-11-20T05:00:03.5Z mx app - ID47 [ex@1 a=\"b\\]\"] x", utc(2026, 11, 20, 5, 0, 3, 0.5)),
    # minutes in the offset, nanoseconds cut to microseconds, no zone (the clock's: UTC)
    (b"2026-11-20T05:00:02.123456789+05:30 mx p[1]: x", utc(2026, 11, 19, 23, 30, 2, 0.123456)),
    (b"2026-11-20T05:00:02.25-09:45 mx p[1]: x", utc(2026, 11, 20, 14, 45, 2, 0.25)),
    (b"2026-11-20T05:00:02.75 mx p[1]: x", utc(2026, 11, 20, 5, 0, 2, 0.75)),
])
def test_iso_and_rfc5424_stamps(line, want):
    h = parse_header(line, Clock("UTC", reference=REF))
    # abs: pytest.approx's default (a millionth of 1.8e9 s) lets half an hour through
    assert h is not None and h.time == pytest.approx(want, abs=1e-5) and line[h.start:] == b"x"


def test_iso_stamp_without_zone_in_a_configured_zone():
    berlin = Clock("Europe/Berlin", reference=REF)
    assert berlin.iso(b"2026-07-01T12:00:00.5") == pytest.approx(utc(2026, 7, 1, 10, 0, 0, 0.5), abs=1e-5)
    assert berlin.iso(b"2026-07-01 12:00:00,5") == pytest.approx(utc(2026, 7, 1, 10, 0, 0, 0.5), abs=1e-5)
    assert berlin.iso(b"2026-07-01T12:00:00+0200") == utc(2026, 7, 1, 10, 0, 0)
    assert berlin.iso(b"2026-07-01T12:00:00+02:7") is None


@pytest.mark.parametrize("stamp", [b"2026-11-20T05:00:\xe903Z", b"2026-11-20T05:00:03\xc3\xa9Z", b"\xff" * 20,
                                   "２０２６-11-20T05:00:03Z".encode()])
def test_rfc5424_stamp_with_non_ascii_bytes_is_no_time(stamp):
    """Issue 13: one such byte aborted `scan` and stopped the daemon (UnicodeDecodeError)."""
    assert parse_header(b"<22>1 " + stamp + b" mx postfix/smtpd 802 - - x", Clock("UTC", reference=REF)) is None


def test_tai64n_stamp_and_untagged_message():
    label = (1 << 62) + 10 + int(utc(2026, 11, 20, 4, 0, 0))
    line = b"@%016x%08x CHKUSER rejected rcpt: x" % (label, 500_000_000)
    h = parse_header(line, Clock())
    assert h.time == pytest.approx(utc(2026, 11, 20, 4, 0, 0, 0.5), abs=1e-6)
    assert h.program == "" and line[h.start:].startswith(b"CHKUSER")


def test_splogger_stamp_and_inner_tag():
    h = parse_header(b"Nov 20 05:01:00 mx smtpd: 1795150860.123456 tcpserver: pid 7 from 192.0.2.1", Clock("UTC", reference=REF))
    assert h.program == "tcpserver" and h.host == b"mx"


@pytest.mark.parametrize("line, host, program, message", [
    # rsyslog templates printing the priority as text before the host
    (b"Nov 20 05:01:00 <mail.info> mx sm-mta[27]: 4AKA0001: from=<a>", b"mx", "sm-mta", b"4AKA0001: from=<a>"),
    # Solaris syslogd's message id after the tag
    (b"Nov 20 05:01:00 mx sendmail[27]: [ID 801593 mail.info] 4AKA0001: from=<a>", b"mx", "sendmail", b"4AKA0001: from=<a>"),
    # a day not padded to two places
    (b"Nov 2 05:01:00 mx postfix/smtpd[1]: connect from x", b"mx", "postfix/smtpd", b"connect from x"),
    # any splogger tag
    (b"Nov 20 05:01:00 mx qmail: 1795150860.123456 rblsmtpd: 192.0.2.1 pid 7: 451 x", b"mx", "rblsmtpd", b"192.0.2.1 pid 7: 451 x"),
])
def test_header_variants(line, host, program, message):
    h = parse_header(line, Clock("UTC", reference=REF))
    assert (h.host, h.program, line[h.start:]) == (host, program, message)
    if b"Nov 2 " in line:
        assert h.time == utc(2026, 11, 2, 5, 1, 0)


def test_solaris_and_rsyslog_priority_headers_reach_the_rules():
    got = offences("Nov 20 05:01:00 mx sendmail[27]: [ID 801593 mail.info] ruleset=check_relay, arg1=[192.0.2.7], "
                   "arg2=192.0.2.7, relay=[192.0.2.7], reject=550 5.7.1 Access denied\n"
                   "Nov 20 05:01:01 <mail.notice> mx sm-mta[28]: 4AKA0001: [192.0.2.8]: possible SMTP attack: command=AUTH, count=5\n")
    assert [(o.ip, o.rule) for o in got] == [("192.0.2.7", "sendmail-check-relay"), ("192.0.2.8", "sendmail-smtp-attack")]


def test_iso_output_is_utc_with_z():
    assert iso(utc(2026, 11, 20, 5, 0, 3, 0.5)) == "2026-11-20T05:00:03.500000Z"
    assert iso(utc(2026, 11, 20, 5, 0, 3)) == "2026-11-20T05:00:03Z"


# ---- correlation ---------------------------------------------------------

def test_sendmail_user_unknown_is_tied_to_the_later_relay_line():
    p = parser()
    first = p.feed(b"Nov 20 03:02:00 mx sm-mta[5]: 4AK30000000004: <nobody@example.com>... User unknown\n", 0)
    assert first == []                         # waits for the session's relay= line
    other = p.feed(b"Nov 20 03:02:01 mx sm-mta[6]: 4AK30000000009: from=<a@example.org>, size=1, class=0, nrcpts=1, proto=ESMTP, daemon=MTA, relay=[198.51.100.2]\n", 1)
    assert other == []
    got = p.feed(b"Nov 20 03:02:02 mx sm-mta[5]: 4AK30000000004: from=<x@example.biz>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA, relay=[198.51.100.120]\n", 2)
    assert [(o.ip, o.kind, o.line) for o in got] == [("198.51.100.120", "unknown_user", 1)]


def test_qmail_pid_links_only_later_lines_of_that_connection():
    text = ("Nov 20 05:02:01 mx qmail-smtpd[4731]: 553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\n"
            "Nov 20 05:02:02 mx tcpserver[1]: pid 4731 from 198.51.100.150\n"
            "Nov 20 05:02:03 mx qmail-smtpd[4731]: 553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\n"
            "Nov 20 05:02:04 mx tcpserver[1]: pid 4731 from 198.51.100.151\n"
            "Nov 20 05:02:05 mx qmail-smtpd[4731]: 553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\n")
    p = parser()
    got = p.parse_lines(text.encode())
    assert [(o.ip, o.line) for o in got] == [("198.51.100.150", 3), ("198.51.100.151", 5)]
    assert p.stats.unresolved == 1


def test_line_numbers_across_chunks_and_crlf():
    p = parser()
    a = b"Nov 20 00:00:00 mx x[1]: benign\r\nNov 20 00:00:01 mx postfix/smtpd[2]: lost connection after AUTH from unknown[192.0.2.9]\r\n"
    b = b"Nov 20 00:00:02 mx x[1]: benign\nNov 20 00:00:03 mx postfix/smtpd[2]: lost connection after AUTH from unknown[192.0.2.10]"
    got = p.feed(a, 0) + p.feed(b, 2)
    assert [(o.ip, o.line) for o in got] == [("192.0.2.9", 2), ("192.0.2.10", 4)]
    assert p.stats.lines == 4


def test_highest_scoring_rule_wins_on_a_line():
    line = ("Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.5]: 454 4.7.1 <x@example.net>: "
            "Relay access denied; from=<a@b> to=<x@example.net> proto=ESMTP helo=<MX.example.com>")
    assert [(o.rule, o.kind) for o in offences(line)] == [("postfix-helo-is-us", "bad_helo")]
    accepted = "Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: warn: EHLO from unknown[192.0.2.6]: x; proto=ESMTP helo=<[192.0.2.25]>"
    assert [(o.ip, o.kind) for o in offences(accepted)] == [("192.0.2.6", "bad_helo")]


def test_program_must_belong_to_the_pack_unless_mta_is_forced():
    line = "Nov 20 01:00:00 mx exim[1]: lost connection after AUTH from unknown[192.0.2.5]"
    assert offences(line) == []
    assert [o.ip for o in offences(line, any_program=True)] == ["192.0.2.5"]


# ---- hostile input -------------------------------------------------------

REAL = "192.0.2.1"
TEMPLATES = [
    "Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 454 4.7.1 <{x}>: Relay access denied; from=<{x}> to=<{x}> proto=ESMTP helo=<{x}>",
    "Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 550 5.1.1 <{x}>: Recipient address rejected: User unknown in local recipient table; from=<{x}> to=<{x}> proto=ESMTP helo=<{x}>",
    "Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: EHLO from unknown[192.0.2.1]: 504 5.5.2 <{x}>: Helo command rejected: need fully-qualified hostname; proto=ESMTP helo=<{x}>",
    "Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: warn: RCPT from unknown[192.0.2.1]: {x}; from=<{x}> to=<{x}> proto=ESMTP helo=<mx.example.com>",
    "Nov 20 01:00:00 mx postfix/submission/smtpd[1]: warning: unknown[192.0.2.1]: SASL LOGIN authentication failed: (reason unavailable), sasl_username={x}",
    "Nov 20 01:00:00 mx postfix/smtpd[1]: warning: non-SMTP command from unknown[192.0.2.1]: {x}",
    "Nov 20 01:00:00 mx postfix/smtpd[1]: improper command pipelining after CONNECT from unknown[192.0.2.1]: {x}",
    "Nov 20 01:00:00 mx postfix/postscreen[1]: PREGREET 11 after 0.1 from [192.0.2.1]:4000: {x}",
    "Nov 20 01:00:00 mx postfix/postscreen[1]: COMMAND PIPELINING from [192.0.2.1]:4000 after EHLO: {x}",
    "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: ruleset=check_rcpt, arg1=<{x}>, relay={x} [192.0.2.1], reject=550 5.7.1 <{x}>... Relaying denied",
    "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: ruleset=check_relay, arg1={x}, arg2=192.0.2.1, relay={x} [192.0.2.1], reject=550 5.7.1 Access denied",
    "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: AUTH failure (LOGIN): authentication failure (-13) SASL(-13): authentication failure: checkpass failed, user={x}, relay=[192.0.2.1]",
    "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: <{x}>... User unknown\nNov 20 01:00:01 mx sm-mta[1]: 4AK3000000000C: from=<{x}>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA, relay=[192.0.2.1]",
    "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: rejecting commands from {x} [192.0.2.1] due to pre-greeting traffic after 0 seconds",
    "@400000006affc5ca0a1b2c3d CHKUSER rejected rcpt: from <{x}::> remote <{x}:unknown:192.0.2.1> rcpt <{x}> : not existing recipient",
    "Nov 20 01:00:00 mx spamdyke[1]: DENIED_RBL_MATCH from: {x} to: {x} origin_ip: 192.0.2.1 origin_rdns: {x} auth: (unknown)",
    "Nov 20 01:00:00 mx qmail-smtpd[1]: qlogenvelope: result=rejected code=553 reason=relaying helo={x} mailfrom={x} rcptto={x} remoteip=192.0.2.1 remoteport=1 remotehost={x}",
    "Nov 20 01:00:00 mx rblsmtpd[1]: 192.0.2.1 pid 4: 451 {x}",
]
PAYLOADS = [
    "NOQUEUE: reject: RCPT from unknown[203.0.113.9]: 454 4.7.1 <a>: Relay access denied",
    "warning: unknown[203.0.113.9]: SASL LOGIN authentication failed",
    "unknown[203.0.113.9]", "[203.0.113.9]:25", "[IPv6:2001:db8::bad]",
    ", relay=x [203.0.113.9]", "relay=[203.0.113.9]", " arg2=203.0.113.9,",
    "> remote <a:b:203.0.113.9> rcpt <", "a:b:203.0.113.9",
    " origin_ip: 203.0.113.9 origin_rdns: x", " remoteip=203.0.113.9", "remoteip=203.0.113.9",
    "lost connection after AUTH from unknown[203.0.113.9]", "PREGREET 1 after 0 from [203.0.113.9]:1: ",
    # text that imitates the rest of the line after a fake address
    "x:y:203.0.113.9> rcpt <b> : not existing recipient",
    "a> remote <x:y:203.0.113.9> rcpt <b> : not existing recipient",
    "x origin_ip: 203.0.113.9 origin_rdns: y auth: (unknown)",
    "x, relay=[203.0.113.9]", "x remoteip=203.0.113.9 remoteport=1",
    ": ", ">", "<", ",", " ", "\\r\\n", "\x00", "\t",
]


def test_templates_find_the_client_with_harmless_text():
    for t in TEMPLATES:
        got = offences(t.replace("{x}", "bob@example.com"))
        assert [o.ip for o in got] == [REAL], t


@pytest.mark.parametrize("payload", PAYLOADS)
def test_injected_addresses_never_come_out(payload):
    for t in TEMPLATES:
        for o in offences(t.replace("{x}", payload)):
            assert o.ip == REAL, (t, payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(t=st.sampled_from(TEMPLATES),
       x=st.lists(st.one_of(st.sampled_from(PAYLOADS), st.text(
           alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12)), max_size=6).map("".join))
def test_no_attacker_text_steers_the_address(t, x):
    for o in offences(t.replace("{x}", x)):
        assert o.ip == REAL


@settings(max_examples=200, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=4000),
    st.lists(st.sampled_from([b"Nov 20 01:00:00 mx postfix/smtpd[1]: ", b"NOQUEUE: reject: ", b"RCPT from ",
                              b"unknown[", b"192.0.2.1", b"]: ", b"\n", b"\x00", b"\xff\xfe", b"warning: ",
                              b"@4000000069", b"<22>1 ", b"[", b"(", b"\\", b" ", b"pid 1 from "]),
             max_size=200).map(b"".join)))
def test_garbage_never_crashes(data):
    p = parser()
    p.feed(data, 0)
    p.finish()


def test_huge_lines_and_pathological_patterns_do_not_stall(tmp_path):
    rules = evil_rules(tmp_path)
    p = Parser(rules, clock=Clock("UTC", reference=REF), match_timeout=0.05)
    line = b"Nov 20 01:00:00 mx evild[1]: evil: " + b"a" * 100_000 + b"\n"
    start = time.monotonic()
    out = p.feed(line * 3 + b"Nov 20 01:00:00 mx x[1]: " + b"\x00" * 2_000_000 + b"\n", 0)
    assert time.monotonic() - start < 5
    assert out == [] and p.stats.timeouts == 3 and p.stats.truncated == 3 and p.stats.lines == 4


def test_an_address_or_key_group_that_took_no_part_is_no_crash(tmp_path):
    """A line the rule takes without its address has no address (counted as such); the
    scan, the daemon and `rules check` go on instead of dying on the log line."""
    p = Parser(optional_group_rules(tmp_path), clock=Clock("UTC", reference=REF))
    got = p.parse_lines(b"Nov 22 10:00:00 mx optd[1]: refused done\n"
                        b"Nov 22 10:00:01 mx optd[1]: queue user unknown\n"
                        b"Nov 22 10:00:02 mx optd[1]: refused client 192.0.2.7 done\n")
    assert [(o.ip, o.rule, o.line) for o in got] == [("192.0.2.7", "opt-address", 3)]
    assert p.stats.bad_address == 1 and p.stats.unresolved == 1 and p.stats.lines == 3
    assert [(r.id, ip, key) for r, ip, key in p.try_line(b"Nov 22 10:00:00 mx optd[1]: refused done")] == \
        [("opt-address", None, None)]
    assert [(r.id, ip, key) for r, ip, key in p.try_line(b"Nov 22 10:00:00 mx optd[1]: queue user unknown")] == \
        [("opt-key", None, None)]


def test_a_key_group_that_took_no_part_ties_no_line_to_another(tmp_path):
    """No key is no key: a keyless link line must not hand its client to every keyless
    offence line after it (another session's, another client's)."""
    p = Parser(optional_group_rules(tmp_path), clock=Clock("UTC", reference=REF))
    got = p.parse_lines(b"Nov 22 10:00:00 mx optd[1]: client is 192.0.2.50\n"
                        b"Nov 22 10:00:01 mx optd[2]: queue user unknown\n"
                        b"Nov 22 10:00:02 mx optd[3]: client 4A0B0 is 192.0.2.51\n"
                        b"Nov 22 10:00:03 mx optd[4]: queue 4A0B0 user unknown\n")
    assert [(o.ip, o.line) for o in got] == [("192.0.2.51", 4)]
    assert p.stats.unresolved == 1


def test_rate_rule_counts_connections():
    from logban.parse import Clock, Parser
    from logban.rules import load_rules, shipped_rules_dir
    p = Parser(load_rules([shipped_rules_dir()]), clock=Clock("UTC", reference=1_795_000_000))
    lines = b"".join(b"Nov 20 10:00:%02d mx postfix/smtpd[1]: connect from unknown[192.0.2.90]\n" % (i % 60)
                     for i in range(31))
    slow = b"".join(b"Nov 20 10:%02d:00 mx postfix/smtpd[1]: connect from unknown[192.0.2.91]\n" % i for i in range(40))
    got = p.parse_lines(lines + slow)
    assert [(o.ip, o.kind, o.rule) for o in got] == [("192.0.2.90", "protocol_abuse", "postfix-connect-rate")]


def test_verified_name_only_from_the_mta():
    from logban.parse import Clock, Parser
    from logban.rules import load_rules, shipped_rules_dir
    p = Parser(load_rules([shipped_rules_dir()]), clock=Clock("UTC", reference=1_795_000_000))
    data = (b"Nov 20 10:00:01 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from mx1.mailout.example.com[192.0.2.10]: "
            b"454 4.7.1 <a@example.net>: Relay access denied; from=<a@example.org> to=<a@example.net> proto=ESMTP helo=<x>\n"
            b"Nov 20 10:00:02 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.11]: "
            b"454 4.7.1 <a@example.net>: Relay access denied; from=<a@example.org> to=<a@example.net> proto=ESMTP helo=<x.mailout.example.com>\n"
            b"Nov 20 10:00:03 mx sm-mta[2]: 4AKA0001: ruleset=check_rcpt, arg1=<s@example.net>, relay=x.mailout.example.com "
            b"[192.0.2.12] (may be forged), reject=550 5.7.1 <s@example.net>... Relaying denied\n")
    assert [(o.ip, o.name) for o in p.parse_lines(data)] == [
        ("192.0.2.10", "mx1.mailout.example.com"), ("192.0.2.11", None), ("192.0.2.12", None)]


# ---- cut lines, never-targets, rate keys --------------------------------

def test_a_cut_line_is_never_read_by_rules_that_need_its_end():
    # The qlog guard would see one " remoteip=" on the cut line: the real one is past max_line.
    fake = ("Nov 20 05:00:00 mx qmail-smtpd[4731]: qlogenvelope: result=rejected code=553 reason=relaying "
            "helo=x remoteip=198.51.100.9 " + "p" * 8300 + " mailfrom=a@example.biz localport=25 "
            "remoteip=203.0.113.146 remoteport=40000 pid=4731")
    p = parser()
    assert p.parse_lines(fake.encode()) == []
    assert p.stats.truncated == 1 and p.stats.truncated_skipped == 1
    # The same line, whole, is skipped by the guard; without the skip, the cut line would give the fake.
    assert offences(fake, max_line=20_000) == []
    rule = RULES.by_id("qmail-qlog-rejected")
    cut = fake.encode()[:8192]
    assert rule.tail and rule.regex.match(cut, cut.index(b"qlogenvelope")).group("ip") == b"198.51.100.9"


def test_a_cut_line_still_feeds_rules_that_read_the_client_field_first():
    line = ("Nov 20 05:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 454 4.7.1 "
            "<a@example.net>: Relay access denied; from=<a@example.org> to=<a@example.net> proto=ESMTP helo=<"
            + "h" * 9000 + ">")
    p = parser()
    assert [(o.ip, o.rule) for o in p.parse_lines(line.encode())] == [("192.0.2.1", "postfix-relay-denied")]
    assert p.stats.truncated == 1      # (postfix-helo-is-us, which reads the end, was skipped)


@pytest.mark.parametrize("addr", ["0.0.0.0", "0.1.2.3", "224.0.0.1", "239.1.2.3", "169.254.7.7", "255.255.255.255",
                                  "::", "::5", "::c633:6407", "fe80::1", "ff02::1", "::ffff:224.0.0.1"])
def test_addresses_that_are_never_ban_targets_make_no_offence(addr):
    p = parser()
    line = f"Nov 20 05:00:00 mx postfix/smtpd[1]: lost connection after AUTH from unknown[{addr}]\n"
    assert p.parse_lines(line.encode() * 2) == []
    assert p.stats.not_target == 2 and p.stats.bad_address == 0


@pytest.mark.parametrize("addr, want", [("127.0.0.1", "127.0.0.1"), ("::1", "::1"), ("::ffff:127.0.0.2", "127.0.0.2"),
                                        ("2001:db8::1", "2001:db8::1"), ("192.0.2.1", "192.0.2.1")])
def test_loopback_and_ordinary_addresses_still_make_offences(addr, want):
    line = f"Nov 20 05:00:00 mx postfix/smtpd[1]: lost connection after AUTH from unknown[{addr}]"
    assert [o.ip for o in offences(line)] == [want]


def test_a_link_to_a_never_target_does_not_leave_the_old_client_behind():
    text = ("Nov 20 05:02:02 mx tcpserver[1]: pid 4731 from 198.51.100.150\n"
            "Nov 20 05:02:03 mx qmail-smtpd[4731]: 553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\n"
            "Nov 20 05:02:04 mx tcpserver[1]: pid 4731 from 0.0.0.0\n"
            "Nov 20 05:02:05 mx qmail-smtpd[4731]: 553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)\n")
    p = parser()
    assert [(o.ip, o.line) for o in p.parse_lines(text.encode())] == [("198.51.100.150", 2)]
    assert p.stats.not_target == 1


def _connects(addrs, minute="10:00"):
    return b"".join(b"Nov 20 %s:%02d mx postfix/smtpd[1]: connect from unknown[%s]\n" % (minute.encode(), i % 60, a.encode())
                    for i, a in enumerate(addrs))


def test_rate_rule_counts_addresses_rotating_inside_one_ipv6_64_together():
    rotating = [f"2001:db8:1:2::{i:x}" for i in range(1, 32)]
    got = parser().parse_lines(_connects(rotating))
    assert [(o.ip, o.rule) for o in got] == [("2001:db8:1:2::1f", "postfix-connect-rate")]
    # Two /64s: neither passes 30. With rate_prefix6=128 each address counts alone.
    split = [f"2001:db8:1:{i % 2}::{i:x}" for i in range(1, 32)]
    assert parser().parse_lines(_connects(split)) == []
    assert parser(rate_prefix6=128).parse_lines(_connects(rotating)) == []
    assert [o.ip for o in parser(rate_prefix6=48).parse_lines(_connects(split))] == ["2001:db8:1:1::1f"]


def test_a_flood_of_new_rate_keys_does_not_reset_a_busy_counter():
    from logban import parse
    p = parser()
    r = RULES.by_id("postfix-connect-rate")
    t0 = REF
    for _ in range(27):
        assert not p._over_rate(r, "192.0.2.90", None, t0)
    # 200k+ fresh keys (a spray of addresses), while 192.0.2.90 keeps connecting.
    fired = []
    touch = {50_000, 100_000, 150_000, parse._LIMIT + 4000}
    for i in range(parse._LIMIT + 5000):
        p._over_rate(r, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", None, t0 + 1)
        if i in touch:
            fired.append(p._over_rate(r, "192.0.2.90", None, t0 + 2))
    assert fired == [False, False, False, True]          # the 31st connection in the minute
    assert len(p._rates) <= parse._LIMIT
    # The oldest keys went first.
    assert (r.id, "10.0.0.0") not in p._rates and (r.id, "192.0.2.90") in p._rates


def test_a_line_the_reader_already_cut_at_max_line_counts_as_cut():
    # sources.chunks and the follower cut an endless line to exactly max_line bytes.
    from io import BytesIO

    from logban.sources import chunks
    fake = ("Nov 20 05:00:00 mx qmail-smtpd[4731]: qlogenvelope: result=rejected code=553 reason=relaying "
            "helo=x remoteip=198.51.100.9 " + "p" * 20_000 + " remoteip=203.0.113.146 remoteport=40000\n").encode()
    p = parser(max_line=8192)
    got = []
    for chunk in chunks(BytesIO(b"x\n" * 3 + fake), 8192, size=4096):
        got += p.feed(chunk, 0)
    assert got == [] and p.stats.truncated == 1 and p.stats.truncated_skipped == 1


def test_offences_tied_by_a_link_carry_the_name_the_mta_verified_on_it():
    """sendmail's "User unknown" names no client: the relay= link line does, with its
    verified name, which the allow-list's name patterns need (a partner stays one)."""
    def lines(relay: str) -> bytes:
        return (f"Nov 20 10:00:00 mx sm-mta[2005]: 4AKA0001234500: <nobody@example.com>... User unknown\n"
                f"Nov 20 10:00:00 mx sm-mta[2005]: 4AKA0001234500: from=<b@mailout.example.com>, size=0, "
                f"class=0, nrcpts=0, proto=ESMTP, daemon=MTA, relay={relay}\n").encode()
    [o] = parser().parse_lines(lines("mx1.mailout.example.com [198.51.100.50]"))
    assert (o.ip, o.name) == ("198.51.100.50", "mx1.mailout.example.com")
    [o] = parser().parse_lines(lines("mx1.mailout.example.com [198.51.100.50] (may be forged)"))
    assert (o.ip, o.name) == ("198.51.100.50", None)


def test_rate_counts_follow_the_scorers_target_and_skip_allow_listed_clients():
    """With the scorer's key: a /64 holding an allow-listed address is counted per address,
    so a partner's many connections are charged neither to itself nor to a neighbour."""
    from logban.allow import AllowList
    from logban.score import Policy, Scorer
    sc = Scorer(Policy(), AllowList(["2001:db8:7::50"], own=()))
    p = parser(rate_key=sc.rate_key)
    lines = [("mx.partner.example", "2001:db8:7::50")] * 60 + [("unknown", "2001:db8:7::51")] * 2
    got = p.parse_lines(b"".join(
        f"Nov 20 10:00:{i % 60:02d} mx postfix/smtpd[1]: connect from {n}[{ip}]\n".encode()
        for i, (n, ip) in enumerate(lines)))
    assert got == []
    rotating = [f"2001:db8:8::{i:x}" for i in range(40)]          # no allow-listed neighbour: one /64
    got = p.parse_lines(b"".join(f"Nov 20 10:01:{i:02d} mx postfix/smtpd[1]: connect from unknown[{ip}]\n".encode()
                                 for i, ip in enumerate(rotating)))
    assert len(got) == 1 and got[0].kind == "protocol_abuse"


def test_year_inference_uses_the_year_where_the_stamps_were_written():
    """East of UTC the new year begins while UTC is still in the old one; a line just after
    New Year that the reference has not quite reached belongs to the new year too."""
    sydney = Clock("Australia/Sydney", reference=calendar.timegm((2026, 12, 31, 14, 0, 0)))   # 01:00 on 1 Jan there
    assert iso(sydney.bsd(b"Jan  1 00:30", b"00")) == "2026-12-31T13:30:00Z"
    utc = Clock("UTC", reference=calendar.timegm((2026, 12, 31, 23, 59, 0)))
    assert iso(utc.bsd(b"Jan  1 00:01", b"00")) == "2027-01-01T00:01:00Z"         # within two days ahead
    assert iso(utc.bsd(b"Jan  5 00:01", b"00")) == "2026-01-05T00:01:00Z"         # beyond: the year before
    assert iso(utc.bsd(b"Dec 31 23:58", b"00")) == "2026-12-31T23:58:00Z"


@pytest.mark.parametrize("tz", [None, "Europe/Berlin"])
def test_a_repeated_dst_hour_is_read_in_order(tz, monkeypatch):
    """Issue 12: during a DST fall-back hour RFC 3164 stamps were read an hour early. The
    first pass is the earlier instant, the second (after the log went past it) the later."""
    from datetime import datetime, timezone
    if tz is None:
        monkeypatch.setenv("TZ", "Europe/Berlin")
        time.tzset()
    try:
        # Europe/Berlin falls back on 25 October 2026, 03:00 CEST -> 02:00 CET (01:00 UTC).
        ref = datetime(2026, 10, 25, 4, 0, tzinfo=timezone.utc).timestamp()
        c = Clock(tz, reference=ref)
        got = [c.bsd(s, b"00") for s in (b"Oct 25 01:59", b"Oct 25 02:30", b"Oct 25 02:59",
                                          b"Oct 25 02:10", b"Oct 25 02:40", b"Oct 25 03:05")]
        want = [datetime(2026, 10, 24, 23, 59), datetime(2026, 10, 25, 0, 30), datetime(2026, 10, 25, 0, 59),
                datetime(2026, 10, 25, 1, 10), datetime(2026, 10, 25, 1, 40), datetime(2026, 10, 25, 2, 5)]
        assert got == [w.replace(tzinfo=timezone.utc).timestamp() for w in want]
        assert got == sorted(got)
        # Read long after (the reference a day later), the same lines give the same instants.
        c = Clock(tz, reference=ref + 86400)
        assert [c.bsd(s, b"00") for s in (b"Oct 25 02:30", b"Oct 25 02:59", b"Oct 25 02:10")] == [got[1], got[2], got[3]]
    finally:
        if tz is None:
            monkeypatch.delenv("TZ")
            time.tzset()


def test_rfc3164_stamps_a_little_ahead_of_the_reference_keep_its_year():
    """A clock a few hours or a day ahead (another host, a zone mistake) is not a line from last year."""
    ref = Clock("UTC", reference=utc(2026, 6, 10, 12, 0, 0))
    for stamp, want in ((b"Jun 11 11:00:00", utc(2026, 6, 11, 11, 0, 0)), (b"Jun 12 11:59:00", utc(2026, 6, 12, 11, 59, 0)),
                        (b"Jun 12 12:01:00", utc(2025, 6, 12, 12, 1, 0))):
        assert parse_header(stamp + b" h postfix/smtpd[1]: x", ref).time == want, stamp


def test_a_session_summary_counts_only_what_its_session_did_not_count_already():
    """smtpd's `disconnect ... auth=0/N` repeats the SASL failures (or the connection lost in
    AUTH) of its session: one failure is one event; a summary alone is one too."""
    p = Parser(load_rules(), clock=Clock(reference=1_795_000_000))
    lines = [
        b"Nov 20 10:00:07 mx postfix/smtpd[1]: warning: unknown[192.0.2.50]: SASL LOGIN authentication failed: x",
        b"Nov 20 10:00:07 mx postfix/smtpd[1]: warning: unknown[192.0.2.50]: SASL LOGIN authentication failed: x",
        b"Nov 20 10:00:08 mx postfix/smtpd[1]: disconnect from unknown[192.0.2.50] ehlo=1 auth=0/2 quit=1 commands=2/4",
        b"Nov 20 10:00:09 mx postfix/smtpd[1]: disconnect from unknown[192.0.2.51] ehlo=1 auth=0/1 quit=1 commands=2/3",
        b"Nov 20 10:00:10 mx postfix/smtpd[2]: warning: unknown[192.0.2.52]: SASL PLAIN authentication failed: x",
        b"Nov 20 10:00:11 mx2 postfix/smtpd[2]: disconnect from unknown[192.0.2.52] ehlo=1 auth=0/1 commands=1/2",
        b"Nov 20 10:00:12 mx postfix/smtpd[3]: lost connection after AUTH from unknown[192.0.2.53]",
        b"Nov 20 10:00:12 mx postfix/smtpd[3]: disconnect from unknown[192.0.2.53] ehlo=1 auth=0/1 commands=1/2",
        b"Nov 20 10:00:13 mx postfix/smtpd[1]: disconnect from unknown[192.0.2.50] ehlo=1 auth=0/1 commands=1/2",
        b"Nov 20 10:00:14 mx postfix/smtpd[4]: disconnect from unknown[192.0.2.54] ehlo=1 auth=1/2 quit=1 commands=3/4",
    ]
    got = [(o.ip, o.rule) for o in p.parse_lines(b"\n".join(lines) + b"\n")]
    assert got == [("192.0.2.50", "postfix-sasl-failed"), ("192.0.2.50", "postfix-sasl-failed"),
                   ("192.0.2.51", "postfix-auth-summary"),
                   ("192.0.2.52", "postfix-sasl-failed"), ("192.0.2.52", "postfix-auth-summary"),   # another host's session
                   ("192.0.2.53", "postfix-lost-after-auth"),
                   ("192.0.2.50", "postfix-auth-summary")]      # the next session of pid 1: nothing counted in it
    assert p.stats.repeated == 2


def test_a_session_table_holds_one_entry_per_pid_not_per_client():
    """A session whose summary never came (auth=1/2 does not repeat its failure, a lost
    line) leaves a note; the next client on the same pid is a new session and replaces it,
    so a million distinct clients no longer fill the table to its bound (75 MB)."""
    p = Parser(load_rules(), clock=Clock(reference=1_795_000_000))
    lines = [b"Nov 20 10:00:%02d mx postfix/smtpd[%d]: warning: unknown[198.51.100.%d]: SASL LOGIN authentication "
             b"failed: x" % (i % 60, 100 + i % 7, i) for i in range(1, 200)]
    # The last clients of pids 100, 101, 102 were .196, .197, .198: a summary of an earlier
    # client of pid 100 repeats nothing (and ends the stale note); the others repeat theirs.
    lines += [b"Nov 20 10:01:00 mx postfix/smtpd[100]: disconnect from unknown[198.51.100.189] auth=0/1 commands=1/2",
              b"Nov 20 10:01:01 mx postfix/smtpd[101]: disconnect from unknown[198.51.100.197] auth=0/1 commands=1/2",
              b"Nov 20 10:01:02 mx postfix/smtpd[102]: disconnect from unknown[198.51.100.198] auth=0/1 commands=1/2"]
    got = [(o.ip, o.rule) for o in p.parse_lines(b"\n".join(lines) + b"\n")]
    assert len(got) == 199 + 1 and p.stats.repeated == 2
    assert got[-1] == ("198.51.100.189", "postfix-auth-summary")
    assert len(p._said) == 4          # pids 103 to 106: their sessions are not summed up yet


def test_rate_window_edges_and_the_count_after_an_offence():
    """over = 30, per = 1m: the 31st connection within a minute (its last second included)
    is an offence, and the next one needs 31 more."""
    from logban.rules import shipped_rules_dir
    p = Parser(load_rules([shipped_rules_dir()]), clock=Clock("UTC", reference=REF))
    t0 = REF - 3600

    def conns(ip: str, seconds) -> bytes:
        return b"".join(time.strftime("%b %d %H:%M:%S", time.gmtime(t0 + s)).encode()
                        + b" mx postfix/smtpd[1]: connect from unknown[%s]\n" % ip.encode() for s in seconds)
    # 30 in the first second, the 31st exactly a minute after the first: still the window.
    edge = conns("192.0.2.90", [0] * 30 + [60])
    # 31 at once (an offence), 30 more (none), one more (an offence).
    again = conns("192.0.2.91", [0] * 31 + [1] * 30 + [2])
    got = p.parse_lines(edge + again)
    assert [(o.ip, o.time - t0) for o in got] == [("192.0.2.90", 60), ("192.0.2.91", 0), ("192.0.2.91", 2)]


# ---- the C address parser against ipaddress -------------------------------------

def _reference(raw: str) -> tuple[str, bool] | None:
    """canonical_ip and not_target as ipaddress alone computes them."""
    s = raw.split("%", 1)[0]
    if s[:5].lower() == "ipv6:":
        s = s[5:]
    try:
        a = ipaddress.ip_address(s)
    except ValueError:
        return None
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    net = ipaddress.ip_network(a)
    return str(a), not net.network_address.is_loopback and unbannable(net) is not None


def _fast(raw: str) -> tuple[str, bool] | None:
    ip = canonical_ip(raw)
    return None if ip is None else (ip, not_target(ip))


_v6_text = st.builds(lambda n, c: str(ipaddress.IPv6Address(n)) if c else ipaddress.IPv6Address(n).exploded,
                     st.integers(0, (1 << 128) - 1), st.booleans())
_v6_small = st.builds(lambda hi, lo: str(ipaddress.IPv6Address((hi << 112) | lo)),
                      st.sampled_from([0, 0xfe80, 0xff02, 0x2001, 0]), st.integers(0, (1 << 48) - 1))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_v6_text, _v6_small, st.ip_addresses().map(str),
                 st.text(alphabet="0123456789abcdefABCDEF:.%IPv6x ", max_size=45),
                 st.sampled_from(["::", "::1", "::2", "::1.2.3.4", "::ffff:1.2.3.4", "::FFFF:C000:024D",
                                  "1.2.3.04", "01.2.3.4", "256.1.1.1", "1.2.3", "0.0.0.0", "255.255.255.255",
                                  "127.0.0.5", "IPv6:::ffff:127.0.0.1", "1:2:3:4:5:6:7::8", "fe80::1%eth0",
                                  "2001:db8::1.2.3.4", "2001:db8:0:0:1:0:0:1", "1::", "1:0:0:2::3"])))
def test_address_parser_matches_ipaddress(raw):
    assert _fast(raw) == _reference(raw)


def test_the_reply_class_is_read_where_the_mta_writes_it():
    """4xx and 5xx from Postfix's client field and sendmail's reject=; text the client wrote
    (a SASL user name, an address sendmail echoes) never makes a refusal look temporary."""
    from logban.parse import reply_class
    p = Parser(load_rules(), clock=Clock(reference=1_795_000_000))
    lines = {
        b"Nov 20 10:00:04 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.21]: 450 4.7.1 <x.invalid>: "
        b"Helo command rejected: Host not found; from=<a@example.org> to=<b@example.com> proto=ESMTP helo=<x.invalid>": 4,
        b"Nov 20 10:00:04 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from mx.example.org[192.0.2.22]: 554 5.7.1 Service "
        b"unavailable; Client host [192.0.2.22] blocked using zen.spamhaus.org; from=<a@example.org> to=<b@example.com> "
        b"proto=ESMTP helo=<x>": 5,
        b"Nov 20 10:00:07 mx postfix/smtpd[1]: warning: unknown[192.0.2.23]: SASL LOGIN authentication failed: x, "
        b"sasl_username=NOQUEUE: reject: RCPT from a[192.0.2.23]: 450 4.7.1 y": 0,
        b"Nov 20 10:00:00 mx sm-mta[2]: 4AKA0001234567: ruleset=check_rcpt, arg1=<a@example.net>, "
        b"relay=bot.example.biz [192.0.2.24] (may be forged), reject=550 5.7.1 <a@x>, reject=451 4.1.1 ... "
        b"Relaying denied": 5,
    }
    for line, want in lines.items():
        [o] = p.parse_lines(line + b"\n")
        assert o.reply == want, line
    assert reply_class(b"ruleset=check_mail, arg1=<a>, relay=x [192.0.2.25], reject=451 4.1.8 Domain of sender") == 4


def test_postfix_maillog_file_lines_written_by_postlog_itself(tmp_path):
    """Postfix >= 3.4 can write its own log (maillog_file, postlog): a zero-padded day, no
    syslog daemon between. The line comes from the real postlog where Postfix is installed."""
    import os
    import shutil
    import subprocess
    import tempfile

    from conftest import skip_or_fail
    if shutil.which("postlog") is None:
        skip_or_fail("needs postlog (Debian package postfix)")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:        # maillog_file_prefixes: /var by default
        conf = os.path.join(d, "conf")
        os.mkdir(conf)
        log = os.path.join(d, "postfix.log")
        with open(os.path.join(conf, "main.cf"), "w") as f:
            f.write(f"maillog_file = {log}\ncompatibility_level = 3.6\nqueue_directory = {d}/q\ndata_directory = {d}/d\n")
        subprocess.run(["postlog", "-c", conf, "-t", "postfix/smtpd",
                        "warning: unknown[198.51.100.9]: SASL LOGIN authentication failed: UGFzc3dvcmQ6"],
                       check=True, timeout=30, capture_output=True)
        data = open(log, "rb").read()
        # postlog is setgid: a shifted clock (libfaketime) never reaches it, so the time it
        # wrote is the kernel's, as the file's mtime is.
        written = os.stat(log).st_mtime
    p = Parser(RULES, clock=Clock(reference=written))          # postlog writes this host's local time
    [o] = p.parse_lines(data)
    assert o.ip == "198.51.100.9" and o.kind == "auth_failed", data
    assert int(written) - 1 <= o.time <= written + 1, (data, o.time, written)
    day = time.strftime("%b %d", time.localtime(o.time)).encode()
    assert data.startswith(day), data            # "Dec 02": the day zero-padded, not "Dec  2" as syslog writes it


def test_matches_without_their_lines_give_the_same_offences_with_no_reply():
    """A report's workers send matches without the lines (jobs.Pool, lines=False): the
    stateful stage makes the same offences of them, of every kind of rule, and reads no reply."""
    from pathlib import Path
    logs = Path(__file__).parent.parent / "samples/logs"
    data = (logs / "postfix/mail.log.1").read_bytes() + (logs / "sendmail/maillog").read_bytes()
    data += b"".join(b"Nov 22 11:00:%02d mx postfix/smtpd[9]: connect from unknown[192.0.2.90]\n" % (i % 60)
                     for i in range(40))
    whole = parser().feed(data, 0)
    p = parser()
    hits, _ = p.match(data, 0)
    bare = p.apply([(i, t, b"", found) for i, t, _, found in hits])
    fields = lambda o: (o.time, o.ip, o.rule, o.kind, o.score, o.line, o.name)
    assert [fields(o) for o in bare] == [fields(o) for o in whole]
    assert {o.reply for o in whole} == {0, 4, 5} and {o.reply for o in bare} == {0}
    used = [r for r in RULES.rules if r.id in {o.rule for o in whole}]
    assert all(any(how(r) for r in used) for how in (
        lambda r: r.rate_over, lambda r: r.session, lambda r: r.key and not r.has_ip))
