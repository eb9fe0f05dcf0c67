"""End to end: the real `logban` process on the sample logs, as a user runs it."""
import bz2
import gzip
import ipaddress
import json
import lzma
import re

import pytest
from conftest import SAMPLES, touch_now

EXPECTED = json.loads((SAMPLES / "expected.json").read_text())
EVENT_KEYS = {"time", "ip", "mta", "rule", "kind", "score", "file", "line"}


def events(stdout: bytes) -> list[dict]:
    return [json.loads(x) for x in stdout.decode().splitlines()]


def test_scan_events_match_the_expectation_file(logban):
    r = logban("scan", "--events", "samples/logs")
    assert r.returncode == 0, r.stderr
    got = events(r.stdout)
    assert all(set(e) == EVENT_KEYS for e in got)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", e["time"]) for e in got)
    seen = sorted((e["file"].removeprefix("samples/logs/"), e["line"], e["ip"], e["kind"], e["rule"]) for e in got)
    want = sorted((x["file"], x["line"], x["ip"], x["kind"], x["rule"]) for x in EXPECTED)
    assert seen == want
    # Oldest first: the rotated .2.gz is read before .1 and the live file.
    files = [e["file"] for e in got if "/postfix/" in e["file"]]
    assert files.index("samples/logs/postfix/mail.log.2.gz") < files.index("samples/logs/postfix/mail.log.1") \
        < files.index("samples/logs/postfix/mail.log")


def test_scan_json_report(logban):
    r = logban("scan", "--json", "--top", "3", "samples/logs")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["offences"] == len(EXPECTED) == sum(rep["by_kind"].values())
    assert rep["by_kind"]["unknown_user"] == sum(1 for x in EXPECTED if x["kind"] == "unknown_user")
    assert [t["ip"] for t in rep["top"]][0] == "192.0.2.70" and rep["top"][0]["count"] == 4
    assert rep["skipped"]["unresolved"] == 2
    assert rep["ignored"] == {"allow_listed": 0}
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    total = 0
    for f in (SAMPLES / "logs").rglob("*"):
        if f.is_file():
            with opener.get(f.suffix, open)(f, "rb") as fh:
                total += fh.read().count(b"\n")
    assert rep["lines"] == total


def test_scan_human_report(logban):
    r = logban("scan", "samples/logs/postfix")
    assert r.returncode == 0
    out = r.stdout.decode()
    assert "Scanned 3 file(s)" in out and "By kind:" in out and "Top 10 offenders:" in out
    assert re.search(r"unknown_user\s+4\s+\d+\.\d%", out)
    assert "192.0.2.70" in out


def test_scan_stdin_and_forced_mta(logban):
    line = b"Nov 20 01:00:00 mx postfix/smtpd[1]: lost connection after AUTH from unknown[192.0.2.5]\n"
    r = logban("scan", "--events", "-", stdin=line)
    assert [(e["ip"], e["file"], e["line"]) for e in events(r.stdout)] == [("192.0.2.5", "-", 1)]
    custom = line.replace(b"postfix/smtpd", b"my-postfix-smtpd")
    assert events(logban("scan", "--events", "-", stdin=custom).stdout) == []
    forced = events(logban("scan", "--events", "--mta", "postfix", "-", stdin=custom).stdout)
    assert [e["mta"] for e in forced] == ["postfix"]
    r = logban("scan", "--mta", "exim", "-", stdin=line)
    assert r.returncode == 2 and b"no rule pack named exim" in r.stderr


def one_line_error(r) -> str:
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_usage_exits_2_with_one_line(logban, tmp_path):
    r = logban("scan")
    assert r.returncode == 2 and "PATH" in one_line_error(r)
    r = logban("scan", str(tmp_path / "missing.log"))      # an unreadable input: exit 1 (contract)
    assert r.returncode == 1 and "no such file" in one_line_error(r)
    r = logban("scan", "--top", "-3", "samples/logs")
    assert r.returncode == 2 and "--top" in one_line_error(r)
    r = logban("scan", "--top", "0", "samples/logs/sendmail")
    assert r.returncode == 0 and b"By kind:" in r.stdout and b"offenders" not in r.stdout
    r = logban("frobnicate")
    assert r.returncode == 2 and "invalid choice" in one_line_error(r)
    cfg = tmp_path / "logban.toml"
    cfg.write_text("[parse]\nmax_line = 1\n")
    r = logban("-c", str(cfg), "scan", "samples/logs")
    assert r.returncode == 2 and "parse.max_line" in one_line_error(r)


def test_bad_rule_pack_in_config_names_file_and_rule(logban, tmp_path):
    packs = tmp_path / "rules.d"
    packs.mkdir()
    (packs / "local.toml").write_text("[[rule]]\nid = \"local-x\"\nkind = \"relay_denied\"\nscore = 1\nmatch = 'relay (?P<ip>[0-9.]+'\n")
    cfg = tmp_path / "logban.toml"
    cfg.write_text(f"[rules]\ndirs = [\"{packs}\"]\n")
    r = logban("-c", str(cfg), "scan", "samples/logs")
    err = one_line_error(r)
    assert r.returncode == 2 and "local.toml" in err and "local-x" in err and "bad regular expression" in err
    r = logban("rules", "check", str(packs))
    assert r.returncode == 2 and "local-x" in one_line_error(r)


def test_rules_check(logban, tmp_path):
    r = logban("rules", "check")
    assert r.returncode == 0 and b"OK" in r.stdout
    packs = tmp_path / "rules.d"
    packs.mkdir()
    (packs / "greedy.toml").write_text(
        "[pack]\nprograms = [\"x\"]\n[[rule]]\nid = \"greedy\"\nkind = \"relay_denied\"\nscore = 1\n"
        "match = 'reject: .* from \\[{{IP}}\\]: denied'\n")
    r = logban("rules", "check", str(packs))
    assert r.returncode == 2 and b"greedy: greedy catch-all" in r.stderr


def test_test_rules_shows_hits_and_unmatched_suspects(logban, tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(
        "Nov 20 01:00:00 mx postfix/smtpd[1]: lost connection after AUTH from unknown[192.0.2.5]\n"
        "Nov 20 01:00:01 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.6]: 550 5.7.1 <a@b>: Recipient address rejected: Greylisted by policy; from=<x> to=<a@b> proto=ESMTP helo=<h>\n"
        "Nov 20 01:00:02 mx postfix/smtpd[1]: connect from unknown[192.0.2.7]\n")
    r = logban("test-rules", str(log))
    out = r.stdout.decode()
    assert r.returncode == 0
    assert re.search(r"postfix-lost-after-auth\s+1\s+auth_failed", out)
    assert "Suspicious lines no rule took" in out and "Greylisted by policy" in out
    assert "connect from unknown[192.0.2.7]" not in out
    r = logban("test-rules", "--rule", "postfix-lost-early", str(log))
    assert "postfix-lost-after-auth" not in r.stdout.decode()


@pytest.mark.parametrize("suffix, compress, damage", [
    (".gz", gzip.compress, lambda b: b[:-40]),
    (".bz2", bz2.compress, lambda b: b[:len(b) // 2]),
    (".xz", lzma.compress, lambda b: b[:60] + b"\x00" * 40 + b[100:]),
])
def test_a_broken_compressed_file_is_reported_and_the_rest_scanned(logban, tmp_path, suffix, compress, damage):
    good = b"Nov 20 01:00:00 mx postfix/smtpd[1]: lost connection after AUTH from unknown[192.0.2.5]\n"
    broken = tmp_path / f"mail.log.1{suffix}"
    broken.write_bytes(damage(compress(good * 1000)))
    (tmp_path / "mail.log").write_bytes(good)
    r = logban("scan", "--json", str(tmp_path))
    rep = json.loads(r.stdout)
    assert r.returncode == 1 and rep["failed"] == [str(broken)]
    assert rep["offences"] >= 1 and broken.name.encode() in r.stderr and b"Traceback" not in r.stderr


def test_events_into_a_closed_pipe_is_not_an_error(logban):
    import subprocess
    import sys

    from conftest import ROOT
    p = subprocess.run(f"{sys.executable} -m logban scan --events samples/logs | head -1", shell=True,
                       capture_output=True, cwd=ROOT)
    assert p.returncode == 0 and b"Traceback" not in p.stderr and p.stdout.count(b"\n") == 1


def test_scan_rates_follow_the_configured_ipv6_prefix(logban, tmp_path):
    """Rate rules count an IPv6 client by its scoring network: the /64 by default,
    the address itself with [ban] ipv6_prefix = 128."""
    log = tmp_path / "mail.log"
    log.write_text("".join(f"Nov 20 01:00:{i:02d} mx postfix/smtpd[1]: connect from unknown[2001:db8:1:2::{i + 1:x}]\n"
                           for i in range(40)))
    r = logban("scan", "--events", str(log))
    assert r.returncode == 0, r.stderr
    assert [e["rule"] for e in events(r.stdout)] == ["postfix-connect-rate"]
    cfg = tmp_path / "logban.toml"
    cfg.write_text("[ban]\nipv6_prefix = 128\n")
    r = logban("-c", str(cfg), "scan", "--events", str(log))
    assert r.returncode == 0, r.stderr
    assert events(r.stdout) == []


def test_unban_all_and_its_filters_lift_from_the_kernel(tmp_path):
    """`unban --kind/--node/--since/--all` (issue 17), options after the command, in nftables
    inside a namespace: what each printed it lifted is what left the kernel."""
    from daemonproc import dnsbl
    from netlab import Lab, need_netns, need_tools
    from test_daemon_modes import nft_elements
    need_netns()
    need_tools("nft")
    attacker, other, third = "198.51.100.2", "198.51.100.3", "203.0.113.60"
    lab = Lab(tmp_path)
    try:
        cfg = tmp_path / "logban.toml"
        cfg.write_text('node = "mx1"\n[parse]\ntimezone = "UTC"\n')
        log = tmp_path / "mail.log"
        log.write_text(dnsbl(other))
        touch_now(log)          # the year of its stamp is read from the mtime (a shifted clock in CI)

        def run(*args: str):
            r = lab.run(lab.srv, *lab.logban_cmd(f"sqlite:///{tmp_path}/t.db", "nftables", "-c", str(cfg), *args),
                        env=lab.env())
            assert r.returncode == 0, r.stderr
            return r.stdout
        run("ban", attacker, "--for", "1h")
        run("ban", third, "--for", "1h")
        run("scan", "--apply", "--node", "mx2", str(log))          # a dnsbl ban of node mx2
        assert nft_elements(lab) == {attacker, other, third}
        assert not lab.connects(other)

        got = json.loads(run("unban", "--kind", "dnsbl", "--json"))
        assert [(u["target"], u["kind"], u["node"]) for u in got["unbanned"]] == [(other, "dnsbl", "mx2")]
        assert "1 removed" in got["firewall"]
        assert nft_elements(lab) == {attacker, third} and lab.connects(other)

        assert "no active ban matches" in run("unban", "--node", "mx1", "--since", "2099-01-01T00:00")
        assert "no active ban matches" in run("unban", "--node", "mx2")
        assert nft_elements(lab) == {attacker, third}

        out = run("unban", "--since", "1h", "--node", "mx1", "--all")
        assert f"unbanned {attacker} (manual, node mx1" in out and f"unbanned {third}" in out
        assert "2 ban(s) lifted" in out and "2 removed" in out      # one sync: one batch to the kernel
        assert nft_elements(lab) == set() and lab.connects(attacker)
        assert json.loads(run("list", "--json")) == []
        assert json.loads(run("unban", "--all", "--json"))["unbanned"] == []
    finally:
        lab.close()


def test_unban_needs_targets_or_a_filter_not_both(logban, tmp_path):
    db = f"sqlite:///{tmp_path}/t.db"
    for args, why in ((("unban",), "give TARGET"), (("unban", "198.51.100.7", "--all"), "not both"),
                      (("unban", "--kind", "spam"), "no kind 'spam'"), (("unban", "--since", "yesterday"), "--since")):
        r = logban("--db", db, *args)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and why in r.stderr.decode(), (args, r.stderr)


def test_completion_scripts_complete_every_command_and_option(logban, tmp_path):
    import shutil
    import subprocess

    from logban.cli.args import build_parser
    r = logban("completion", "bash")
    assert r.returncode == 0, r.stderr
    script = tmp_path / "logban.bash"
    script.write_bytes(r.stdout)

    def complete(line: str) -> set[str]:
        words = line.split(" ")
        sh = (f"source {script}; COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
              f"COMP_LINE={line!r}; COMP_POINT={len(line)}; _shtab_logban; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        p = subprocess.run(["bash", "-c", sh], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p.stderr
        return set(p.stdout.split())
    commands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    assert {"status", "allow", "unban", "completion", "scan"} <= commands
    assert complete("logban ") >= commands
    assert complete("logban st") == {"stats", "status"}
    assert complete("logban allow ") >= {"add", "remove", "list"}
    assert complete("logban unban --") >= {"--all", "--kind", "--node", "--since", "--json", "--db", "--backend"}
    assert complete("logban allow add x --") >= {"--reason", "--for", "--force", "--json"}
    assert complete("logban completion ") == {"bash", "zsh"}
    r = logban("completion", "zsh")
    assert r.returncode == 0 and b"#compdef logban" in r.stdout and b"--since" in r.stdout
    if not shutil.which("zsh"):
        from conftest import skip_or_fail
        skip_or_fail("no zsh (apt-get install zsh)")
    (tmp_path / "_logban").write_bytes(r.stdout)
    # Installed as zsh installs completions: a file on $fpath that compinit binds to the command.
    p = subprocess.run(["zsh", "-f", "-c", f"fpath=({tmp_path} $fpath); autoload -U compinit && "
                        f"compinit -u -d {tmp_path}/zcompdump && print -r -- $_comps[logban]"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and p.stdout.strip() == "_logban" and p.stderr == "", (p.stdout, p.stderr)
    assert subprocess.run(["zsh", "-n", str(tmp_path / "_logban")], timeout=30).returncode == 0
    assert logban("completion", "fish").returncode == 2
@pytest.mark.parametrize("target", ["192.0.2.7", "198.51.100.0/24", "2001:db8::5", "2001:db8:0:5::/64", "::1"])
def test_unban_reads_the_networks_around_a_target_by_their_canonical_names(target):
    from logban.cli.common import _around
    net = ipaddress.ip_network(target)
    want = [target] + [str(net.supernet(new_prefix=p)) for p in range(net.prefixlen)]
    assert _around(target) == want
