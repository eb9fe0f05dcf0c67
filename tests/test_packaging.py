"""The shipped service files: the default config loads as it is, and the unit is sane."""
import configparser
import re
import shutil
import subprocess
import time
from pathlib import Path

from conftest import ROOT, skip_or_fail

from logban.config import load_config

PKG = ROOT / "packaging"


def test_default_config_follows_the_postfix_log_in_dry_run():
    cfg = load_config(PKG / "logban.toml")
    assert cfg.dry_run is True
    assert [(str(p), m) for p, m in cfg.daemon.follow] == [("/var/log/mail.log", "postfix")]
    assert cfg.daemon.journal_if_missing == {Path("/var/log/mail.log")}     # Debian 12+: the journal instead


def test_unit_is_type_notify_hardened_and_reloads_with_sighup():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(PKG / "logban.service")
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["ExecStart"].endswith("logban run")
    assert "HUP" in svc["ExecReload"]
    assert set(svc["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_DAC_READ_SEARCH"}
    assert svc["ProtectSystem"] == "strict" and "/var/lib/logban" in svc["ReadWritePaths"]
    assert svc["SupplementaryGroups"] == "systemd-journal"


def test_unit_verifies_with_systemd_analyze(tmp_path):
    if shutil.which("systemd-analyze") is None:
        skip_or_fail("systemd-analyze is not installed (Debian: systemd)")
    unit = tmp_path / "logban.service"
    unit.write_text((PKG / "logban.service").read_text().replace("/opt/logban/bin/logban", shutil.which("true")))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    bad = [ln for ln in r.stderr.splitlines() if "logban.service" in ln and
           any(w in ln for w in ("Unknown", "Failed to parse", "Invalid", "ignoring"))]
    assert not bad, r.stderr


def test_unit_runs_logban_where_the_readme_install_puts_it():
    readme = (ROOT / "README.md").read_text()
    unit = (PKG / "logban.service").read_text()
    exec_start = next(ln.split("=", 1)[1].split()[0] for ln in unit.splitlines() if ln.startswith("ExecStart="))
    venv = exec_start.removesuffix("/bin/logban")
    assert f"sudo python3 -m venv {venv} && sudo {venv}/bin/pip install" in readme
    assert "sudo python3 -m pip install" not in readme and "\npython3 -m pip install" not in readme   # PEP 668


def test_exports_drop_in_opens_exactly_the_readme_export_directories():
    readme = (ROOT / "README.md").read_text()
    toml_paths = re.findall(r'^path = "(/[^"]+)"', readme, flags=re.M)
    assert toml_paths, "the README's [[export]] examples"
    text = (PKG / "logban-exports.conf").read_text()
    rw = sorted(ln.split("=", 1)[1].strip() for ln in text.splitlines() if ln.startswith("ReadWritePaths="))
    assert rw == sorted({str(Path(p).parent) for p in toml_paths})
    assert "logban.service.d/exports.conf" in readme and "logban-exports.conf" in readme


def test_every_skip_goes_through_skip_or_fail():
    """A bare skip stays a skip under CI=true; `skip_or_fail` fails there (issue 14)."""
    words = [f"pytest{w}" for w in (".skip(", ".mark.skip", ".importorskip(")] + ["skip" + "if("]
    bare = [f"{p.name}:{n}" for p in sorted((ROOT / "tests").glob("*.py")) if p.name != "conftest.py"
            for n, ln in enumerate(p.read_text().splitlines(), 1)
            if any(w in ln for w in words)]
    assert not bare, f"bare skips: {bare}"


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\blogban_[a-z_]+", expr))


def test_grafana_dashboard_queries_only_metrics_a_running_daemon_exports(tmp_path, daemons):
    """Every metric the dashboard asks for has samples in the /metrics of a real daemon that
    read lines, found offences, banned, and let the ban expire."""
    import json
    import socket
    import urllib.request

    from daemonproc import NET, Daemon, append, dnsbl, sasl
    dash = json.loads((PKG / "grafana" / "logban.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    wanted = set().union(*map(_metric_names, exprs))
    assert {"logban_lines_total", "logban_offences_total", "logban_bans_added_total", "logban_bans_released_total",
            "logban_bans_active", "logban_follow_lag_bytes", "logban_store_up", "logban_store_outages_total"} <= wanted
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dash["panels"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "mail.log"
    log.write_text("")
    d = Daemon(tmp_path, "--follow", str(log),
               config=f'metrics = "127.0.0.1:{port}"\n[ban.durations]\ndnsbl = "2s"\n').start()
    daemons.append(d)
    append(log, sasl(f"{NET}.1") + dnsbl(f"{NET}.2"))
    d.wait_log(f"ban {NET}.2")
    deadline, missing = time.monotonic() + 30, wanted
    while missing and time.monotonic() < deadline:        # until the ban's expiry is counted too
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        exported = {m.group(1) for m in re.finditer(r"^(logban_[a-z_]+)[{ ]", text, re.MULTILINE)}
        missing = wanted - exported
        time.sleep(0.2)
    assert not missing, f"the dashboard queries metrics the daemon does not export: {sorted(missing)}"
    assert re.search(r"^logban_store_up 1\.0$", text, re.MULTILINE)


def test_readme_names_every_package_the_ci_script_installs():
    """The README's word on what `bash .ci/run` installs on a host is the script's own list."""
    script = (ROOT / ".ci" / "run").read_text()
    listed = re.search(r"^for pkg in (.*?); do", script, flags=re.M | re.S)[1].replace("\\\n", " ").split()
    readme = " ".join((ROOT / "README.md").read_text().split())      # the list may wrap
    said = re.search(r"the Debian packages `([^`]+)` when missing", readme)
    assert said and said[1].split() == listed
