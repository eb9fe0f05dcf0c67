"""The `logban` command: arguments in, one of the stages out, exit status as the contract says."""
from __future__ import annotations

import os
import sys

from ..config import load_config
from ..errors import ExportError, FirewallError, StoreError, UsageError
from ..report import safe
from .allow import cmd_allow
from .args import build_parser
from .bans import cmd_ban, cmd_list, cmd_show, cmd_unban
from .completion import cmd_completion
from .daemon import cmd_reload, cmd_run
from .export import cmd_export
from .firewall import cmd_firewall
from .report import cmd_report
from .rules import cmd_rules_check, cmd_test_rules
from .scan import cmd_scan
from .stats import cmd_stats
from .status import cmd_status

COMMANDS = {"scan": cmd_scan, "firewall": cmd_firewall, "export": cmd_export, "run": cmd_run, "reload": cmd_reload, "test-rules": cmd_test_rules, "rules": cmd_rules_check, "list": cmd_list,
            "ban": cmd_ban, "unban": cmd_unban, "show": cmd_show, "stats": cmd_stats, "status": cmd_status,
            "allow": cmd_allow, "completion": cmd_completion, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        cfg = load_config(args.config)
        return COMMANDS[args.command](args, cfg)
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
