"""Adversarial lines: text the client writes never chooses the address a rule takes.

Log lines are partly written by the attacker (HELO, sender, recipient, SASL user
name). Whatever it puts there — colon runs, copies of the MTA's own client
fields, a copy of the rest of the line, padding past max_line — a rule takes the
real client's address or nothing, never the injected one.
"""
import calendar
import json
import re

import pytest
from conftest import run_logban
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logban.parse import Clock, Parser
from logban.rules import load_rules

RULES = load_rules()
REF = calendar.timegm((2026, 11, 22, 12, 0, 0))
MAX_LINE = 8192
FAKE4, FAKE6 = "203.0.113.250", "2001:db8:bad::1"
FAKES = (FAKE4, FAKE6, "2001:db8:bad::", "::ffff:203.0.113.250")


def run(line: str) -> tuple[list[str], set[str]]:
    """Addresses of the offences the shipped packs make of `line`, and the addresses links learnt."""
    p = Parser(RULES, clock=Clock("UTC", reference=REF), max_line=MAX_LINE)
    got = [o.ip for o in p.parse_lines(line.encode("utf-8", "surrogateescape"))]
    return got, {ip for ip, _ in p._links.values()} - {""}


def fragments(fake: str) -> list[str]:
    """Text an attacker puts in a field: the MTAs' own client fields around `fake`, and colon runs."""
    return [
        ":", "::", ":::", ":" * 9, f":{fake}", f"{fake}:", f"h:x:{fake}", "h:x:", "h:x:2001:db8:dead:beef",
        f" remoteip={fake}", f"x remoteip={fake} remoteport=1", f", relay=[{fake}]", f", relay=x [{fake}]",
        f"[{fake}]", f"[IPv6:{fake}]", f"from [{fake}]", f"from [{fake}]:25", f"host[{fake}]", f"unknown[{fake}]: ",
        f"from unknown[{fake}]", f" origin_ip: {fake} origin_rdns: x", f"a to: b origin_ip: {fake} origin_rdns: ",
        f"> remote <h:x:{fake}> rcpt <b> : not existing recipient", f"x:{fake}",
        f" arg2={fake}, relay=[{fake}], reject=550 5.7.1 x... Relaying denied",
        "<", ">", " ", ",", "]", "[", "\\r\\n",
    ]


PAD = "p" * (MAX_LINE + 200)


# ---- per pack: lines with the attack in each client-written field ----------

# {x} marks a client-written field; "tail" injects a copy of the line's own end
# (after the field, with the real address replaced by the fake one).
TEMPLATES = {
    "postfix": [
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 454 4.7.1 <{x}>: Relay access denied; from=<{x}> to=<{x}> proto=ESMTP helo=<{x}>"),
        ("2001:db8::1", "Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[2001:db8::1]: 550 5.1.1 <{x}>: Recipient address rejected: User unknown in local recipient table; from=<{x}> to=<{x}> proto=ESMTP helo=<{x}>"),
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: EHLO from unknown[192.0.2.1]: 504 5.5.2 <{x}>: Helo command rejected: need fully-qualified hostname; proto=ESMTP helo=<{x}>"),
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/submission/smtpd[1]: warning: unknown[192.0.2.1]: SASL LOGIN authentication failed: (reason unavailable), sasl_username={x}"),
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/smtpd[1]: warning: non-SMTP command from unknown[192.0.2.1]: {x}"),
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/postscreen[1]: PREGREET 11 after 0.1 from [192.0.2.1]:4000: {x}"),
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/postscreen[1]: NOQUEUE: reject: RCPT from [192.0.2.1]:4000: 550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.example; from=<{x}>, to=<{x}>, proto=ESMTP, helo=<{x}>"),
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/cleanup[1]: 4F2A71235: milter-reject: END-OF-MESSAGE from unknown[192.0.2.1]: 5.7.1 Virus found: Eicar; from=<{x}> to=<{x}> proto=ESMTP helo=<{x}>"),
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/smtpd[1]: 4F2A71235: reject: BDAT from unknown[192.0.2.1]: 550 5.5.3 <{x}>: Data command rejected: Multi-recipient bounce; from=<{x}> to=<{x}> proto=ESMTP helo=<{x}>"),
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 <{x}>: Relay access denied; from=<{x}> to=<{x}> proto=SMTP helo=<{x}>"),
        ("192.0.2.1", "Nov 20 01:00:00 mx postfix/smtpd[1]: improper command pipelining after DATA from unknown[192.0.2.1]: {x}"),
    ],
    "sendmail": [
        ("192.0.2.1", "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: ruleset=check_rcpt, arg1=<{x}>, relay=[192.0.2.1], reject=550 5.7.1 <{x}>... Relaying denied"),
        ("2001:db8::1", "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: ruleset=check_rcpt, arg1=<{x}>, relay=[IPv6:2001:db8::1], reject=550 5.7.1 <{x}>... Relaying denied"),
        ("192.0.2.1", "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: AUTH failure (LOGIN): authentication failure (-13) SASL(-13): authentication failure: checkpass failed, user={x}, relay=[192.0.2.1]"),
        ("192.0.2.1", "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: ruleset=check_mail, arg1=<{x}>, relay=[192.0.2.1], reject=553 5.1.8 <{x}>... Domain of sender address {x} does not exist"),
        ("192.0.2.1", "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: <{x}>... User unknown\nNov 20 01:00:01 mx sm-mta[1]: 4AK3000000000C: from=<{x}>, size=0, class=0, nrcpts=0, proto=ESMTP, daemon=MTA, relay=[192.0.2.1]"),
        ("192.0.2.1", "Nov 20 01:00:00 mx sm-mta[1]: ruleset=check_relay, arg1={x}, arg2=192.0.2.1, relay=[192.0.2.1], reject=421 4.3.2 Connection rate limit exceeded."),
        ("192.0.2.1", "Nov 20 01:00:00 mx sm-acceptingconnections[1]: 4AK3000000000C: ruleset=check_rcpt, arg1=<{x}>, relay=[192.0.2.1], reject=550 5.7.1 <{x}>... Rejected: IP in Example blocklist"),
        ("192.0.2.1", "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: [192.0.2.1]: EXPN {x} [rejected]"),
        ("192.0.2.1", "Nov 20 01:00:00 mx sm-mta[1]: 4AK3000000000C: rejecting commands from  [192.0.2.1] due to pre-greeting traffic after 0 seconds{x}"),
    ],
    "qmail": [
        ("198.51.100.7", "@4000000063f1c2d30f3b2a1c CHKUSER rejected rcpt: from <{x}> remote <{x}::198.51.100.7> rcpt <{x}> : not existing recipient"),
        ("198.51.100.7", "@4000000063f1c2d30f3b2a1c CHKUSER rejected relaying: from <{x}> remote <{x}:unknown:198.51.100.7> rcpt <{x}> : client not allowed to relay"),
        ("2001:db8::133", "@4000000063f1c2d30f3b2a1c CHKUSER rejected rcpt: from <{x}> remote <{x}::2001:db8::133> rcpt <{x}> : not existing recipient"),
        ("2001:db8::133", "@4000000063f1c2d30f3b2a1c CHKUSER rejected rcpt: from <{x}> remote <{x}:mx.example.de:2001:db8::133> rcpt <{x}> : not existing recipient"),
        ("203.0.113.146", "Nov 20 01:00:00 mx qmail-smtpd[1]: qlogenvelope: result=rejected code=553 reason=relaying helo={x} mailfrom={x} rcptto={x} authuser={x} localip=192.0.2.1 localport=25 remoteip=203.0.113.146 remoteport=1 remotehost=bot.example.biz qp=1 pid=1"),
        ("203.0.113.140", "Nov 20 01:00:00 mx spamdyke[1]: DENIED_RBL_MATCH from: {x} to: {x} origin_ip: 203.0.113.140 origin_rdns: (unknown) auth: {x} encryption: (none)"),
        ("203.0.113.150", "Nov 20 01:00:00 mx spamdyke[1]: DENIED_OTHER from: {x} to: {x} origin_ip: 203.0.113.150 origin_rdns: (unknown) auth: {x} encryption: (none) reason: 550_sorry,_no_mailbox_here_by_that_name"),
        ("198.51.100.136", "Nov 20 01:00:00 mx qmail-smtpd[1]: CHKUSER rejected rcpt: from <{x}|remoteinfo:|chkuserid:> remote <helo:{x}|remotehostname:|remotehostip:198.51.100.136> rcpt <{x}> : not existing recipient"),
        ("2001:db8::136", "Nov 20 01:00:00 mx qmail-smtpd[1]: CHKUSER rejected rcpt: from <{x}|remoteinfo:|chkuserid:> remote <helo:{x}|remotehostname:mx.example.de|remotehostip:2001:db8::136> rcpt <{x}> : not existing recipient"),
        ("203.0.113.160", "Nov 20 01:00:00 mx vpopmail[1]: vchkpw-smtp: password fail (pass: '{x}') {x}@example.com:203.0.113.160"),
        ("203.0.113.165", "Nov 20 01:00:00 mx smtp_auth: smtp_auth: FAILED: {x} - password incorrect from unknown@ [203.0.113.165]"),
        ("203.0.113.164", "@4000000063f1c2d30f3b2a1c tcpserver: deny 4742 mx.example.com:192.0.2.1:25 bot.example.biz:{x}:203.0.113.164:40000"),
        ("203.0.113.163", "@4000000063f1c2d30f3b2a1c simscan:[4741]:VIRUS:0.4210s:Eicar-Test-Signature:203.0.113.163:{x}:{x}"),
    ],
}


def _tail_copy(template: str, real: str, fake: str) -> str:
    """The template's text after its last field, the real address swapped for the fake one."""
    return template.rsplit("{x}", 1)[1].split("\n")[0].replace(real, fake)


def _fills(real: str, template: str) -> list[str]:
    out = []
    for fake in (FAKE4, FAKE6):
        tail = _tail_copy(template, real, fake)
        head = template.split("{x}", 1)[1]
        out += fragments(fake) + [tail, "x" + tail, head.replace(real, fake), f"x remoteip={fake} {PAD}",
                                  f"x, relay=[{fake}]{PAD}", f"{PAD}{tail}", PAD + f":{fake}", f"h:x:{fake}{PAD}"]
    return out


CASES = [(pack, real, t, fill) for pack, ts in TEMPLATES.items() for real, t in ts for fill in _fills(real, t)]


@pytest.mark.parametrize("pack", sorted(TEMPLATES))
def test_each_template_finds_the_client_with_harmless_text(pack):
    for real, t in TEMPLATES[pack]:
        got, _ = run(t.replace("{x}", "bob.example.com"))
        assert got == [real], t


@pytest.mark.parametrize("pack", sorted(TEMPLATES))
def test_attacks_in_every_field_never_choose_the_address(pack):
    for p, real, t, fill in CASES:
        if p != pack:
            continue
        # the attack in one field at a time, and in all of them at once
        n = t.count("{x}")
        for i in range(n + 1):
            parts = t.split("{x}")
            line = "".join(part + ((fill if i in (j, n) else "bob.example.com") if j < n else "")
                           for j, part in enumerate(parts))
            got, links = run(line)
            assert set(got) <= {real} and links <= {real}, (line[:300], got)


def test_the_qlog_padding_attack_gives_nothing():
    # The HELO carries a fake remoteip= and pushes the real one past max_line.
    t = TEMPLATES["qmail"][4][1]
    line = t.replace("{x}", f"x remoteip=198.51.100.9 {PAD}", 1).replace("{x}", "a")
    assert run(line) == ([], set())
    assert run(t.replace("{x}", "x remoteip=198.51.100.9 y")) == ([], set())      # whole line: two remoteip=


def test_chkuser_helo_with_colons_cannot_choose_the_address():
    t = "@4000000063f1c2d30f3b2a1c CHKUSER rejected rcpt: from <a@example.biz> remote <{helo}:{host}:{ip}> rcpt <b@example.com> : not existing recipient"
    for helo, host, ip, want in [
        ("h:x:2001:db8:dead:beef", "", "198.51.100.7", ["198.51.100.7"]),
        ("h:x:", "", "198.51.100.7", ["198.51.100.7"]),
        ("h:x:2001:db8:dead:beef", "", "2001:db8::7", []),
        ("h:x:2001:db8:dead:beef", "unknown", "2001:db8::7", ["2001:db8::7"]),
        ("mail.example.de", "", "2001:db8::7", ["2001:db8::7"]),
        ("x:1", "", "2001:db8:1:2:3:4:5:6", []),
        ("[IPv6:2001:db8::7]", "mx.example.de", "2001:db8::7", ["2001:db8::7"]),
    ]:
        assert run(t.format(helo=helo, host=host, ip=ip))[0] == want, (helo, host, ip)


# ---- every shipped rule: its own test lines, attacked in client-written fields ----

# Where the client writes, per message shape: (pattern with a group "f" around the field).
FIELDS = [
    r"helo=<(?P<f>[^>]*)>", r"from=<(?P<f>[^>]*)>", r"to=<(?P<f>[^>]*)>",
    r" [245]\d\d [245]\.\d+\.\d+ <(?P<f>[^>]*)>: ",                 # postfix: recipient, sender or HELO in the reply
    r"sasl_username=(?P<f>.*)$", r"authentication failed: (?P<f>.*)$",
    r"command from \S+: (?P<f>.*)$", r"pipelining after [A-Z]+ from \S+: (?P<f>.*)$",
    r"PREGREET \d+ after \S+ from \S+: (?P<f>.*)$", r"after [A-Z]+: (?P<f>.*)$",
    r"arg1=(?P<f><[^>]*>|[^,]*),", r"user=(?P<f>[^,]*),", r"reject=\d{3} \S+ <(?P<f>[^>]*)>\.\.\.",
    r"sender address (?P<f>\S+) does", r"^\S+ \S+ \S+ \S+ \S+ \S+: <(?P<f>[^>]*)>\.\.\. User unknown",
    r"CHKUSER [a-z ]+: from <(?P<f>[^>]*)>", r"remote <(?P<f>[^:>]*):", r"rcpt <(?P<f>[^>]*)> :",
    r"from: (?P<f>\S+) to:", r"to: (?P<f>\S+) origin_ip:", r"auth: (?P<f>\S+)",
    r" helo=(?P<f>[^<\s]\S*)", r"mailfrom=(?P<f>\S*)", r"rcptto=(?P<f>\S*)", r"authuser=(?P<f>\S*)",
    r"pid \d+: (?:451|553) (?P<f>.*)$",
    r"\(pass: '(?P<f>[^']*)'\)", r"(?:fail|found) (?:\(pass: '[^']*'\) )?(?P<f>[^\s:]+@[^\s:]*)",
    r"simscan:\S*:\d+\.\d+\.\d+\.\d+:(?P<f>.*)$", r"(?i:expn|vrfy) (?P<f>.*) \[rejected\]$",
    r"deny \d+ \S+ [^:\s]*:(?P<f>\S*):\d+\.\d+\.\d+\.\d+:\d+$", r"FAILED: (?P<f>.*) from \S+ \[",
    r"reject=\d{3} \S+ (?P<f>.*)\.\.\. User unknown",
]
# Shapes in which the client writes nothing the rule reads (the MTA's own fields only).
NO_CLIENT_FIELD = {
    "postfix-lost-after-auth", "postfix-auth-summary", "postfix-lost-early", "postfix-too-many-errors", "postscreen-dnsbl",
    "postscreen-hangup", "postscreen-bare-newline", "postscreen-limit", "postscreen-denylisted",
    "postfix-connect-rate", "postscreen-connect-rate", "qmail-tcpserver-pid", "sendmail-no-mail",
    "sendmail-smtp-attack", "sendmail-pregreet",
    # the MTA's own fields, the admin's list names, and reverse names (after the address)
    "postfix-anvil-limit", "postfix-bare-lf", "qmail-badiprbl", "qmail-rblsmtpd-old", "qmail-relaylock-pid",
    "qmail-greetdelay",
}


def _spans(line: str) -> list[tuple[int, int]]:
    spans = set()
    for f in FIELDS:
        for m in re.finditer(f, line):
            spans.add(m.span("f"))
    return sorted(spans)


SAMPLES = [(r.id, t.line, t.ip) for r in RULES.rules for t in r.tests if t.ip]
ATTACKED = [(rid, line, ip, _spans(line)) for rid, line, ip in SAMPLES if _spans(line)]


def test_the_field_table_covers_every_rule_with_client_written_fields():
    covered = {rid for rid, *_ in ATTACKED}
    assert {rid for rid, _, _ in SAMPLES} - covered == NO_CLIENT_FIELD
    assert len(ATTACKED) >= 40


def _injection(sample_line: str, real: str):
    tail_of = lambda end, fake: sample_line[end:].replace(real, fake)
    piece = st.one_of(
        st.sampled_from(fragments(FAKE4) + fragments(FAKE6) + fragments("2001:db8:bad:")),
        st.sampled_from(FAKES).map(lambda f: f"[{f}]"),
        st.sampled_from(["p" * 50, PAD]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=8),
    )
    return piece, tail_of


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_no_injected_text_steers_any_shipped_rule(data):
    rid, line, real, spans = data.draw(st.sampled_from(ATTACKED), label="rule test")
    chosen = data.draw(st.lists(st.sampled_from(spans), min_size=1, max_size=len(spans), unique=True), label="fields")
    out, pos = [], 0
    for start, end in sorted(chosen):
        if start < pos:
            continue
        piece, tail_of = _injection(line, real)
        parts = data.draw(st.lists(st.one_of(piece, st.sampled_from(FAKES).map(lambda f, e=end: tail_of(e, f))),
                                   min_size=1, max_size=4), label="injected")
        out += [line[pos:start], "".join(parts)]
        pos = end
    attacked = "".join(out) + line[pos:]
    got, links = run(attacked)
    assert set(got) <= {real}, (rid, attacked[:400], got)
    assert links <= {real}, (rid, attacked[:400], links)


# ---- end to end: cut lines through `logban scan --events` -----------------

def test_scan_events_on_cut_lines_never_names_the_injected_address(tmp_path):
    qlog = ("Nov 20 10:00:00 mx qmail-smtpd[4731]: qlogenvelope: result=rejected code=553 reason=relaying "
            f"helo=x remoteip=198.51.100.9 {'p' * 9000} mailfrom=a@example.biz rcptto=x@example.net "
            "localip=192.0.2.1 localport=25 remoteip=203.0.113.146 remoteport=40000 remotehost=bot.example.biz qp=1 pid=4731")
    chk = ("@4000000063f1c2d30f3b2a1c CHKUSER rejected rcpt: from <a@example.biz> remote <h:x:2001:db8:dead:beef::198.51.100.7> "
           "rcpt <nobody@example.com> : not existing recipient")
    spam = ("Nov 20 10:00:00 mx spamdyke[4720]: DENIED_RBL_MATCH from: a to: b origin_ip: 203.0.113.250 origin_rdns: x "
            f"{'p' * 9000} to: bob@example.com origin_ip: 203.0.113.140 origin_rdns: (unknown) auth: (unknown)")
    client_first = ("Nov 20 10:00:01 mx postfix/smtpd[1234]: NOQUEUE: reject: RCPT from unknown[192.0.2.10]: 454 4.7.1 "
                    f"<spam@example.net>: Relay access denied; from=<a@example.org> to=<spam@example.net> proto=ESMTP helo=<{'h' * 9000}>")
    # the same qlog line split over the reader's chunks: cut by the reader, not the parser
    long_qlog = qlog.replace("p" * 9000, "p" * (1 << 20))
    f = tmp_path / "mail.log"
    f.write_text("\n".join([qlog, chk, spam, client_first, long_qlog]) + "\n")
    r = run_logban("scan", "--events", str(f))
    assert r.returncode == 0, r.stderr
    got = [(e["line"], e["ip"], e["rule"]) for e in map(json.loads, r.stdout.decode().splitlines())]
    assert got == [(2, "198.51.100.7", "qmail-chkuser-unknown"), (4, "192.0.2.10", "postfix-relay-denied")]


# ---- kinds: client text can make its own offence no lighter -----------------

def kinds(line: str) -> list[tuple[str, str]]:
    p = Parser(RULES, clock=Clock("UTC", reference=REF), max_line=MAX_LINE)
    return [(o.ip, o.kind) for o in p.parse_lines(line.encode())]


def test_client_text_cannot_choose_the_kind_where_the_mta_states_it():
    # A sender naming malware does not make a policy reject a virus verdict (the search stops at "; from=").
    assert kinds("Nov 20 01:00:00 mx postfix/cleanup[1]: 4F2A71235: milter-reject: END-OF-MESSAGE from unknown[192.0.2.1]: "
                 "5.7.1 Rejected by policy; from=<virus-trojan@example.biz> to=<b@example.com> proto=ESMTP helo=<x>") \
        == [("192.0.2.1", "client_rejected")]
    # spamdyke: an auth: name imitating a reason does not replace the real one at the line end.
    assert kinds("Nov 20 01:00:00 mx spamdyke[1]: DENIED_OTHER from: a to: b origin_ip: 203.0.113.150 origin_rdns: (unknown) "
                 "auth: x_reason:_550_no_mailbox encryption: (none) reason: 553_sorry,_that_domain_isn't_in_my_list_of_allowed_rcpthosts") \
        == [("203.0.113.150", "relay_denied")]
    # A server-side SASL failure stays none, whatever the client wrote before it.
    assert kinds("Nov 20 01:00:00 mx postfix/smtpd[1]: warning: unknown[192.0.2.9]: SASL LOGIN authentication failed: "
                 "Connection lost to authentication server") == []


def test_chkuser_pipe_layout_helo_imitating_the_address_field():
    t = ("Nov 20 01:00:00 mx qmail-smtpd[1]: CHKUSER rejected rcpt: from <a@example.biz|remoteinfo:|chkuserid:> "
         "remote <helo:{helo}|remotehostname:{host}|remotehostip:{ip}> rcpt <b@example.com> : not existing recipient")
    for helo, host, ip, want in [
        (f"x|remotehostip:{FAKE4}", "", "198.51.100.7", ["198.51.100.7"]),
        (f"x|remotehostname:|remotehostip:{FAKE4}>", "", "198.51.100.7", []),      # ">" in the HELO: skipped
        (f"x|remotehostip:{FAKE6}", "mx.example.de", "2001:db8::7", ["2001:db8::7"]),
        (f"x|remotehostip:{FAKE6}", "", "198.51.100.7", ["198.51.100.7"]),
    ]:
        assert run(t.format(helo=helo, host=host, ip=ip))[0] == want, (helo, host, ip)


def test_client_text_cannot_make_a_refusal_look_temporary():
    """sendmail's ", reject=4xx" is read only from a sendmail line: a sender address, SASL
    user name or HELO in a Postfix line that copies it ("ruleset=", ", reject=451 ") does not
    turn the offence into a temporary reject that weighs less (issue: reply class)."""
    lie = '"x, reject=451 ruleset=y"@example.biz'
    lines = [
        ("Nov 22 10:00:00 mx postfix/smtpd[1]: NOQUEUE: milter-reject: RCPT from unknown[192.0.2.40]: 550 5.7.1 "
         f"Spam; from=<{lie}> to=<x@example.com> proto=ESMTP helo=<x>"),
        ("Nov 22 10:00:00 mx postfix/smtpd[1]: warning: unknown[192.0.2.41]: SASL LOGIN authentication failed: "
         "UGFzc3dvcmQ6, sasl_username=a, reject=451 ruleset=x"),
    ]
    for line in lines:
        p = Parser(RULES, clock=Clock("UTC", reference=REF), max_line=MAX_LINE)
        [o] = p.parse_lines(line.encode() + b"\n")
        assert o.reply != 4, line
