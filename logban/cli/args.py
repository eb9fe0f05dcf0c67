"""The command line's grammar: every command, option and help text."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..errors import UsageError

COUNT_MAX = 1_000_000_000          # far above any real use; keeps SQL LIMITs in range

EPILOG = """\
exit status:
  0  success
  1  runtime failure (an unreadable input among several: the others are still read and reported;
     the store or the firewall failed)
  2  bad usage, bad config or bad rule pack (one line on stderr names the file, key or rule)
  3  `logban status` only: the daemon is not running

environment:
  LOGBAN_DEBUG=1  show the Python traceback of an unexpected error instead of one line

The global options -c, --db and --backend may be given before or after the command.
`logban COMMAND --help` shows each command's options and examples."""


class _Args(argparse.ArgumentParser):
    def __init__(self, *a, **kw) -> None:
        kw.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*a, **kw)

    # The command parser reached last: argparse reports a command's unknown option from the
    # top parser, whose help does not list it.
    reached: str | None = None

    def parse_known_args(self, args=None, namespace=None):
        _Args.reached = self.prog
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> None:          # one line, exit 2
        prog = _Args.reached if message.startswith("unrecognized arguments") and _Args.reached else self.prog
        raise UsageError(f"{message} (see '{prog} --help')")


def _count(text: str) -> int:
    if not text.isdigit() or int(text) > COUNT_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to {COUNT_MAX:,}")
    return int(text)


def _global_options(p: argparse.ArgumentParser, default) -> None:
    """-c, --db, --backend: on the top parser (default None) and on every command (SUPPRESS,
    so a command that does not name them keeps what was given before the command)."""
    p.add_argument("-c", "--config", type=Path, metavar="FILE", default=default,
                   help="TOML config file (default: /etc/logban/logban.toml if present)")
    p.add_argument("--db", metavar="URL", default=default,
                   help="database URL (SQLAlchemy; default: SQLite in /var/lib/logban as root, "
                        "~/.local/state/logban otherwise)")
    p.add_argument("--backend", choices=("nftables", "ipset", "iptables", "none"), default=default,
                   help="firewall backend (default: [firewall] backend, auto; none without root)")


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {ln}" for ln in lines)


class _Sub:
    """Adds commands that all take the global options and end their help with examples."""

    def __init__(self, action) -> None:
        self.action = action

    def add(self, name: str, help: str, *examples: str) -> argparse.ArgumentParser:
        p = self.action.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                                   epilog=_examples(*examples) if examples else None)
        _global_options(p, argparse.SUPPRESS)
        return p


def build_parser() -> argparse.ArgumentParser:
    ap = _Args(prog="logban", description="Ban hostile mail clients found in Postfix, sendmail and qmail logs.",
               epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"logban {__version__}")
    _global_options(ap, None)
    sub = _Sub(ap.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Args))

    sc = sub.add("scan", "scan log files once and report offenders",
                 "logban scan /var/log/mail.log*               # a rotated set, oldest first",
                 "logban scan --apply --dry-run samples/logs/  # record bans, never enforce them",
                 "logban scan --journal --since 24h --events   # the system journal's last day")
    sc.add_argument("paths", nargs="*", metavar="PATH", help="file, directory, rotated set member, or - for stdin")
    sc.add_argument("--journal", action="store_true", help="the system journal (its mail entries)")
    sc.add_argument("--journal-file", action="append", default=[], nargs="+", metavar="FILE",
                    help="journal files (*.journal), read together")
    sc.add_argument("--journal-dir", action="append", default=[], metavar="DIR", help="the journal files in DIR")
    sc.add_argument("--since", metavar="TIME", help="only offences from TIME on: ISO 8601 (2026-11-20T08:00) "
                                                    "or a duration back from now (24h)")
    sc.add_argument("--until", metavar="TIME", help="only offences before TIME (ISO 8601 or a duration back from now)")
    sc.add_argument("--mta", action="append", metavar="PACK", help="read every line with this rule pack (postfix, sendmail, qmail)")
    out = sc.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON report")
    out.add_argument("--events", action="store_true", help="one JSON object per offence")
    sc.add_argument("--top", type=_count, default=10, metavar="N", help="offenders listed (default 10)")
    sc.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    sc.add_argument("--apply", action="store_true",
                    help="score the offences by their log time and record offences and bans in the store")
    sc.add_argument("--dry-run", action="store_true", help="with --apply: bans are recorded as dry-run, never enforced")
    sc.add_argument("--reapply", action="store_true",
                    help="with --apply: also the lines an earlier scan --apply applied (they are counted again)")
    sc.add_argument("--node", metavar="NAME", help="this server's name in a shared store (default: host name)")
    sc.add_argument("--jobs", type=_count, default=0, metavar="N",
                    help="processes reading large files in parts (default: the cores available; 1: this one only); "
                         "the result is the same")

    ls = sub.add("list", "active bans (--all: history too)",
                 "logban list", "logban list --all", "logban list --json | jq '.[].target'")
    ls.add_argument("--all", action="store_true", help="every ban, released ones too")
    ls.add_argument("--json", action="store_true", help="a JSON array")

    bn = sub.add("ban", "ban an address or network by hand",
                 "logban ban 198.51.100.7                      # as root: in the kernel firewall at once",
                 "logban ban 198.51.100.7 --dry-run            # recorded only (so is --backend none)",
                 'logban ban 203.0.113.0/24 --for 3d --reason "spam run"')
    bn.add_argument("target", metavar="TARGET", help="address or CIDR without host bits (198.51.100.0/24); "
                                                     "a /8 or wider (IPv6 /32 or wider) needs --force")
    bn.add_argument("--for", dest="duration", metavar="DURATION",
                    help="how long (90s, 10m, 12h, 3d, 2w, or permanent; default: ban.durations.manual)")
    bn.add_argument("--reason", default="", metavar="TEXT", help="why, for the record")
    bn.add_argument("--dry-run", action="store_true", help="record as dry-run, never enforce")
    bn.add_argument("--force", action="store_true", help="allow a ban of a /8 or wider (IPv6: /32 or wider)")
    bn.add_argument("--json", action="store_true", help="the ban and the firewall's answer as one JSON object")

    ub = sub.add("unban", "lift bans and clear the score of addresses or networks",
                 "logban unban 203.0.113.0/24 2001:db8::5 --json",
                 "logban unban --all                           # every active ban, in one kernel batch",
                 "logban unban --kind dnsbl --node mx2 --since 2h --json")
    ub.add_argument("targets", nargs="*", metavar="TARGET", help="address or CIDR (a network ban covering it is lifted)")
    ub.add_argument("--all", action="store_true", help="every active ban (or, with filters, every one they match)")
    ub.add_argument("--kind", action="append", metavar="KIND", help="active bans of this kind (repeatable)")
    ub.add_argument("--node", action="append", metavar="NODE", help="active bans this node decided (repeatable)")
    ub.add_argument("--since", metavar="TIME", help="active bans made since TIME (a duration back from now "
                                                    "like 2h, or ISO 8601 like 2026-05-01T12:00)")
    ub.add_argument("--json", action="store_true", help="what was lifted, as one JSON object")

    sh = sub.add("show", "what logban knows about an address or network: score, offences, bans, why",
                 "logban show 198.51.100.7", "logban show 203.0.113.0/24 --offences 100", "logban show --json 2001:db8::5")
    sh.add_argument("target", metavar="TARGET", help="address or CIDR")
    sh.add_argument("--json", action="store_true", help="one JSON object")
    sh.add_argument("--offences", type=_count, default=20, metavar="N", help="recent offences shown (default 20)")

    st = sub.add("stats", "offences and bans by kind, top offenders",
                 "logban stats", "logban stats --since 24h --top 20", "logban stats --json")
    st.add_argument("--since", metavar="DURATION", help="only the last DURATION (like 24h, 7d; default: all the store holds)")
    st.add_argument("--json", action="store_true", help="one JSON object")
    st.add_argument("--top", type=_count, default=10, metavar="N", help="offenders listed (default 10)")

    rpt = sub.add("report", "the period's offences and bans: one self-contained HTML page with charts, or text",
                 "logban report -o /var/www/logban.html", "logban report --since 24h --format text | mail -s logban root",
                 "logban report --since 30d --node mx1 -o mx1.html")
    rpt.add_argument("-o", "--output", type=Path, metavar="FILE", help="write FILE (replaced atomically) instead of stdout")
    rpt.add_argument("--since", default="7d", metavar="DURATION", help="the period: the last DURATION (default 7d)")
    rpt.add_argument("--node", metavar="NAME", help="only what this node read and decided (default: all nodes)")
    rpt.add_argument("--format", choices=("html", "text"), default="html", help="html (default) or text")
    rpt.add_argument("--top", type=_count, default=20, metavar="N", help="offenders listed (default 20)")

    tr = sub.add("test-rules", "show what the rules make of a log file, or of single lines",
                 "logban test-rules /var/log/mail.log", "logban test-rules --rule postfix-unknown-user mail.log",
                 "logban test-rules --line 'Nov 20 10:00:00 mx sm-mta[1]: ...'",
                 "grep CHKUSER /var/log/maillog | logban test-rules --line -")
    tr.add_argument("file", nargs="?", metavar="FILE", help="a log file (plain or compressed), a directory, or - for stdin")
    tr.add_argument("--line", action="append", metavar="TEXT",
                    help="one log line (repeatable; - reads lines from stdin): which rule takes it, the client, "
                         "kind and score, or which rules came close and why not")
    tr.add_argument("--rule", metavar="ID", help="only this rule")
    tr.add_argument("--mta", action="append", metavar="PACK", help="read every line with this rule pack")
    tr.add_argument("--samples", type=_count, default=3, metavar="N", help="matched lines shown per rule (default 3)")
    tr.add_argument("--unmatched", type=_count, default=20, metavar="N", help="suspicious unmatched lines shown (default 20)")
    tr.add_argument("--json", action="store_true", help="one JSON object")

    rn = sub.add("run", "the daemon: follow logs, ban, release, for as long as it runs",
                 "logban run                                   # as configured in /etc/logban/logban.toml",
                 "logban run --follow /var/log/mail.log --dry-run",
                 "logban --db sqlite:////tmp/t.db run --follow ./mail.log --backend none")
    rn.add_argument("--follow", action="append", type=Path, default=[], metavar="PATH",
                    help="a log file to follow (repeatable; adds to [[follow]] in the config)")
    rn.add_argument("--journal", action="store_true", help="follow the system journal (adds to [[follow]])")
    rn.add_argument("--journal-dir", action="append", type=Path, default=[], metavar="DIR",
                    help="follow the journal files in DIR (repeatable)")
    rn.add_argument("--dry-run", action="store_true", help="decide and record, never touch the firewall")
    rn.add_argument("--node", metavar="NAME", help="this server's name in a shared store (default: host name)")
    ss = sub.add("status", "the running daemon's state (exit 0 running, 3 not running)",
                 "logban status", "logban status --json | jq .sources", "logban -c /etc/logban/mx2.toml status --node mx2")
    ss.add_argument("--json", action="store_true", help="one JSON object, running or not")
    ss.add_argument("--node", metavar="NAME", help="the node asked about (default: any the pid file's daemon runs)")

    al = sub.add("allow", "the live allow-list in the store, honoured at once by every node",
                 "logban allow add 198.51.100.7 --reason 'partner relay'",
                 "logban allow add '*.mailout.partner.example' --for 7d",
                 "logban allow remove 203.0.113.0/24", "logban allow list --json")
    asub = _Sub(al.add_subparsers(dest="allow_command", required=True, metavar="SUBCOMMAND", parser_class=_Args))
    aa = asub.add("add", "allow an address, a network or a verified host name pattern",
                  "logban allow add 198.51.100.7", "logban allow add 2001:db8:5::/48 --reason 'partner'",
                  "logban allow add '*.out.partner.example' --for 2w")
    aa.add_argument("target", metavar="TARGET", help="address, CIDR, or a host name pattern (*.partner.example) "
                                                     "matched against verified names only")
    aa.add_argument("--reason", default="", metavar="TEXT", help="why, for the record")
    aa.add_argument("--for", dest="duration", metavar="DURATION", help="how long (90s, 10m, 12h, 3d, 2w; default: until removed)")
    aa.add_argument("--force", action="store_true", help="allow a /8 or wider (IPv6: /32 or wider); /0 is always refused")
    aa.add_argument("--json", action="store_true", help="the entry as one JSON object")
    ar = asub.add("remove", "remove an entry of the live allow-list", "logban allow remove 198.51.100.7",
                  "logban allow remove '*.out.partner.example' --json")
    ar.add_argument("target", metavar="TARGET", help="as it was added")
    ar.add_argument("--json", action="store_true", help="one JSON object")
    alist = asub.add("list", "the allow-list in force: the config's and the live entries, with their origin",
                     "logban allow list", "logban allow list --json")
    alist.add_argument("--json", action="store_true", help="a JSON array")

    sub.add("reload", "make the running daemon reload its config and rule packs (SIGHUP)",
            "logban reload", "sudo systemctl reload logban      # the same under systemd")

    ex = sub.add("export", "the active bans as a DNSBL zone or an MTA access map",
                 "logban export --format postfix -o /etc/postfix/logban.cidr",
                 "logban export --format rbldnsd -o /var/lib/rbldnsd/logban4",
                 "logban export --format json | jq length")
    ex.add_argument("--format", required=True, choices=("rbldnsd", "rbldnsd6", "postfix", "postfix-hash",
                                                        "sendmail", "plain", "json"),
                    help="rbldnsd (ip4set zone), rbldnsd6 (ip6tset), postfix (cidr map), postfix-hash, "
                         "sendmail (access map), plain (one target a line), json")
    ex.add_argument("-o", "--output", type=Path, metavar="FILE",
                    help="replace FILE atomically (and build the map: postmap, makemap) instead of printing; "
                         "its directory must exist")
    ex.add_argument("--action", default="REJECT", metavar="ACTION",
                    help='postfix/sendmail: REJECT (default) or a code like "554 5.7.1"')

    fw = sub.add("firewall", "the kernel firewall: status, sync with the store, teardown",
                 "logban firewall status", "sudo logban firewall sync", "sudo logban --backend ipset firewall teardown")
    fsub = _Sub(fw.add_subparsers(dest="firewall_command", required=True, metavar="SUBCOMMAND", parser_class=_Args))
    fs = fsub.add("status", "backend, table, sets, chains, element counts and drift from the store",
                  "logban firewall status", "logban firewall status --json")
    fs.add_argument("--json", action="store_true", help="one JSON object")
    fy = fsub.add("sync", "make the kernel hold exactly the active bans (re-adds, removes, refreshes)",
                  "sudo logban firewall sync", "sudo logban firewall sync --backend nftables")
    fy.add_argument("--json", action="store_true", help="what was added, removed and refreshed as one JSON object")
    ft = fsub.add("teardown", "remove everything logban created in the firewall (bans stay in the store)",
                  "sudo logban firewall teardown", "sudo logban firewall teardown --backend ipset")
    ft.add_argument("--json", action="store_true", help="the backend and whether it had anything to remove, as JSON")

    rp = sub.add("rules", "rule pack tools", "logban rules check", "logban rules check /etc/logban/rules.d")
    rsub = _Sub(rp.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND", parser_class=_Args))
    ck = rsub.add("check", "validate and lint rule packs and run their tests",
                  "logban rules check", "logban rules check /etc/logban/rules.d", "logban rules check --json ./my-packs")
    ck.add_argument("dir", nargs="?", type=Path, metavar="DIR",
                    help="a directory of packs (*.toml) layered over the shipped ones")
    ck.add_argument("--json", action="store_true", help="one JSON object: packs, rules, tests, problems")

    cp = sub.add("completion", "print a shell completion script",
                 "logban completion bash | sudo tee /usr/share/bash-completion/completions/logban",
                 "logban completion zsh > ~/.zfunc/_logban")
    cp.add_argument("shell", choices=("bash", "zsh"), help="the shell")
    return ap
