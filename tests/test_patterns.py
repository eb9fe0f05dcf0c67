"""Pattern text read before it is compiled: literal hints, line-end reads and the linter."""
import pytest

from logban.patterns import (
    _alternatives,
    _client_fields_before_ip,
    _group_end,
    derive_hint,
    lint_notes,
    lint_pattern,
    literal_runs,
    tail_reason,
)
from logban.rules import expand, load_rules


def test_linter_rejects_catch_all_before_the_address():
    assert lint_pattern(r"reject: .* from \[(?P<ip>[0-9.]+)\]") is not None
    assert lint_pattern(r"reject: .{0,400}? from \[(?P<ip>[0-9.]+)\]") is not None
    assert lint_pattern(r"reject: RCPT from \[(?P<ip>[0-9.]+)\]: .*") is None
    # Anchored at the end: the address is the MTA's own trailing field.
    assert lint_pattern(r"AUTH failure: .{0,2000}, relay=\[(?P<ip>[0-9.]+)\]$") is None
    assert lint_pattern(r"AUTH failure: .{0,2000}, relay=\[(?P<ip>[0-9.]+)\].*$") is not None
    # A look-ahead consumes nothing.
    assert lint_pattern(r"(?!.* x=.* x=)res x=(?P<ip>[0-9.]+)") is None


@pytest.mark.parametrize("pattern", [
    r"reject: .* from \[(?P<ip>[0-9.]+)\]",                      # catch-all before the address
    r"helo=[^ ]{1,64}:(?P<ip>[0-9A-Fa-f:.]+) x",                  # the address can start in the HELO
    r"from=<[^>]{0,1000}> client (?P<ip>[0-9.]+)$",               # after a client-written field
])
def test_linter_reads_the_address_group_in_both_spellings(pattern):
    """regex takes "(?<ip>" for "(?P<ip>": written so, an unsafe pattern must not pass unseen."""
    other = pattern.replace("(?P<ip>", "(?<ip>")
    assert lint_pattern(other) == lint_pattern(pattern)
    assert _client_fields_before_ip(other) == _client_fields_before_ip(pattern)
    assert lint_pattern(pattern) is not None or _client_fields_before_ip(pattern)


@pytest.mark.parametrize("pattern, tagged, hint", [
    ("NOQUEUE: reject: RCPT", True, ("NOQUEUE: reject:", True)),   # cut at 16
    ("(?:NOQUEUE|\\w+): reject: RCPT from", True, ("reject: RCPT fro", True)),
    ("(?:NOQUEUE: )?lost connection after", True, ("lost connection ", True)),
    ("(?:NOQUEUE: )?lost connection after", False, ("lost connection after", False)),
    ("(?:x )?lost connection after", True, ("lost connection after", False)),
    ("\\d+ did not issue MAIL", True, (" did not issue MAIL", False)),
    ("ab?cdef", True, ("cdef", False)),
    ("a|b", True, None),
    ("(?i)hello there", True, None),
])
def test_hint_derivation(pattern, tagged, hint):
    assert derive_hint(pattern, tagged) == hint


def test_literal_runs_skip_groups_and_classes():
    assert literal_runs(r"ab[cd]ef(?:gh)ij\.k", True) == [("ab", True), ("ef", False), ("ij.k", False)]


# ---- lint: the address group's left edge, bounded guards, cut lines ---------

OLD_CHK = (r"CHKUSER rejected rcpt: from <[^\s<>]{0,512}> remote <[^\s<>:]{0,255}:[^\s<>:]{0,255}:{{IP}}> "
           r"rcpt <[^\s<>]{0,512}> : not existing recipient$")


def _expanded(pattern: str) -> str:
    return expand(pattern, ())


@pytest.mark.parametrize("pattern, why", [
    (OLD_CHK, "swallow"),                                   # {{IP}} right after ':' (the old chkuser macro)
    (r"remote <[^\s<>]{0,600}:{{IP}}>", "swallow"),
    (r"host=[^\s]{0,64}{{IP}}", "swallow"),                  # a field that can end with a digit
    (r"remote <[^\s<>]{0,600}:(?P<ip>[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){1,7})>", "hold ':'"),
    (r"remote <[^\s<>:]{0,99}:(?P<ip>[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){1,7})>", "hex digits"),
    (r"(?!.{0,8192}? remoteip=.{0,8192}? remoteip=)result=rejected remoteip={{IP}}", "bounded look-ahead"),
    (r"(?![^\n]{0,500} x=)res x={{IP}}", "bounded look-ahead"),
])
def test_lint_fires_on_patterns_that_let_client_text_choose_the_address(pattern, why):
    got = lint_pattern(_expanded(pattern))
    assert got is not None and why in got


@pytest.mark.parametrize("pattern", [
    r"RCPT from (?P<name>[^\s\[\]]{0,255})\[{{IP}}\]: ",
    r"{{IP}} pid \d{1,10}: ",
    r"origin_ip: {{IP}} origin_rdns: ",
    r"relay=(?:(?P<name>[^\s\[\],]{1,255}) )?\[{{IP}}\]$",
    r"(?!.*? remoteip=.*? remoteip=)result=rejected code=\d{3}(?: [a-z]{1,9}=\S{0,512}){0,40}? remoteip={{IP}}(?: |$)",
    # the fixed chkuser field: IPv4 after the last ':', IPv6 fenced by a non-address character
    r"remote <[^\s<>]{0,600}:(?P<ip>[0-9]{1,3}(?:\.[0-9]{1,3}){3}|(?<=[^\s<>:0-9A-Fa-f][0-9A-Fa-f]{0,63}::?)"
    r"[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){1,7})> rcpt <",
])
def test_lint_accepts_fields_that_pin_the_address(pattern):
    assert lint_pattern(_expanded(pattern)) is None


def test_shipped_packs_pass_the_lint_and_the_fixed_rules_are_clean():
    rules = load_rules(own_names=("mx.example.com",))
    assert [(r.id, lint_pattern(r.regex.pattern.decode())) for r in rules.rules
            if lint_pattern(r.regex.pattern.decode())] == []


def test_rules_that_read_the_line_end_are_marked_and_named():
    rules = load_rules()
    tail = {r.id for r in rules.rules if r.tail}
    assert {"qmail-qlog-rejected", "qmail-chkuser-unknown", "sendmail-auth-failure", "spamdyke-rbl"} <= tail
    assert not {"postfix-relay-denied", "postfix-non-smtp", "sendmail-pregreet", "postscreen-pregreet"} & tail
    notes = lint_notes(rules.by_id("qmail-qlog-rejected"))
    assert len(notes) == 1 and "rule qmail-qlog-rejected" in notes[0] and "max_line" in notes[0]
    assert "client-written" in notes[0]
    assert lint_notes(rules.by_id("postfix-relay-denied")) == []
    assert tail_reason(r"a\$b[$]") is None and tail_reason(r"a(?=b)") and tail_reason(r"a\Z") and tail_reason("a$")


def test_the_pattern_walker_reads_nothing_in_escapes_and_classes_as_syntax():
    src = r"(a\)[)|(]b)c|(d|e)\|f"
    assert _group_end(src, 0) == 11 and src[:11] == r"(a\)[)|(]b)"
    assert _alternatives(src) == [r"(a\)[)|(]b)c", r"(d|e)\|f"]
    assert tail_reason(r"x[$(?=]\$") is None and tail_reason(r"x[$](?!y)") == "a look-ahead"
    assert _group_end("(ab", 0) == 3 and _group_end("(a\\", 0) == 4     # left open: as far as it reaches
