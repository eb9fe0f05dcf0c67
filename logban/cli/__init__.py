"""The `logban` command: arguments in, one of the stages out, exit status as the contract says."""
from __future__ import annotations

import importlib
import os
import sys

from ..config import load_config
from ..errors import ExportError, FirewallError, StoreError, UsageError
from ..report import safe
from .args import build_parser

# command -> (module of logban.cli, its function): imported when it runs, so that a command
# loads only what it needs (`logban ban` no scan, report or daemon code).
COMMANDS = {"scan": ("scan", "cmd_scan"), "firewall": ("firewall", "cmd_firewall"), "export": ("export", "cmd_export"),
            "run": ("daemon", "cmd_run"), "reload": ("daemon", "cmd_reload"), "test-rules": ("rules", "cmd_test_rules"),
            "rules": ("rules", "cmd_rules_check"), "list": ("bans", "cmd_list"), "ban": ("bans", "cmd_ban"),
            "unban": ("bans", "cmd_unban"), "show": ("bans", "cmd_show"), "stats": ("stats", "cmd_stats"),
            "status": ("status", "cmd_status"), "allow": ("allow", "cmd_allow"),
            "completion": ("completion", "cmd_completion"), "report": ("report", "cmd_report")}


def command(name: str):
    """The function that runs command `name`."""
    module, fn = COMMANDS[name]
    return getattr(importlib.import_module(f".{module}", __name__), fn)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        cfg = load_config(args.config)
        return command(args.command)(args, cfg)
    except UsageError as e:
        print(safe(f"logban: {e}"), file=sys.stderr)
        return e.exit_status
    except (StoreError, FirewallError, ExportError) as e:
        print(safe(f"logban: {e}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout went away (`logban scan --events ... | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if os.environ.get("LOGBAN_DEBUG"):
            raise
        print(safe(f"logban: {_one_line(e)}"), file=sys.stderr)
        return 1


def _one_line(e: Exception) -> str:
    """An unexpected error in one line: a database's own message without SQLAlchemy's SQL dump,
    a file error with its file, anything else with its type (LOGBAN_DEBUG=1 shows the traceback)."""
    if type(e).__module__.startswith("sqlalchemy"):
        from ..store import Store, short_error
        return f"{Store.last_opened}: {short_error(e)}"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return f"error: {type(e).__name__}: {e}"
