"""The config file: every bad value named by key, exit status 2."""
import pytest

from logban.config import load_config, parse_duration
from logban.errors import UsageError


@pytest.mark.parametrize("text, want", [("90s", 90), ("10m", 600), ("12h", 43200), ("3d", 259200),
                                        ("2w", 1209600), ("1h30m", 5400), ("1.5h", 5400)])
def test_durations(text, want):
    assert parse_duration(text) == want


@pytest.mark.parametrize("text", ["", "10", "10x", "-5m", "m", "5 m"])
def test_bad_durations(text):
    with pytest.raises(UsageError, match="not a duration"):
        parse_duration(text)


def test_config_values(tmp_path):
    p = tmp_path / "logban.toml"
    p.write_text('[parse]\nown_names = ["mx.example.com"]\ntimezone = "Europe/Berlin"\nmatch_timeout = "100ms"\n'
                 .replace('"100ms"', "0.1") + '[rules]\ndisable = ["postscreen-pregreet"]\n')
    cfg = load_config(p)
    assert cfg.parse.own_names == ("mx.example.com",) and cfg.parse.timezone == "Europe/Berlin"
    assert cfg.parse.match_timeout == 0.1 and cfg.disable == ("postscreen-pregreet",)


@pytest.mark.parametrize("text, key", [
    ("[parse]\ntimezone = \"Mars/Olympus\"\n", "parse.timezone"),
    ("[parse]\nmax_line = 10\n", "parse.max_line"),
    ("[parse]\nown_names = \"mx\"\n", "parse.own_names"),
    ("[parse]\nspeed = 1\n", "parse.speed"),
    ("[firewal]\n", "unknown key firewal "),
    ("[parse\n", "not valid TOML"),
    # Issue 12: threshold = nan banned on every offence; every number is finite and sane.
    ("[score]\nthreshold = nan\n", "score.threshold"),
    ("[score]\nthreshold = inf\n", "score.threshold"),
    ("[ban]\nfactor = nan\n", "ban.factor"),
    ("[ban.durations]\nmanual = nan\n", "ban.durations.manual"),
    ("[score]\nwindow = inf\n", "score.window"),
    ("[ban]\nlookback = inf\n", "ban.lookback"),
    ("[parse]\nclock_skew = \"2d\"\n", "parse.clock_skew"),
    # Tiny but positive: a daemon that does nothing but reconcile, a resolver that always times out.
    ("[daemon]\nsync_interval = 1e-300\n", "daemon.sync_interval must be at least 10s"),
    ("[allow]\nresolve_timeout = 0.001\n", "allow.resolve_timeout must be at least 0.1s"),
])
def test_bad_config_names_the_key(tmp_path, text, key):
    p = tmp_path / "logban.toml"
    p.write_text(text)
    with pytest.raises(UsageError) as e:
        load_config(p)
    assert key in str(e.value) and str(p) in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UsageError, match="config file not found"):
        load_config(tmp_path / "none.toml")


def test_scoring_and_ban_tables(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('database = "sqlite:////tmp/x.db"\nnode = "mx2"\ndry_run = true\n'
                 '[score]\nthreshold = 8\nhalf_life = "15m"\n'
                 '[ban]\nfactor = 3\nmax = "7d"\nsubnet_bans = 0\nipv6_prefix = 56\n'
                 '[ban.durations]\nvirus = "permanent"\nauth_failed = "30m"\n'
                 '[allow]\naddresses = ["192.0.2.0/24"]\nhostnames = ["*.mailout.example.com"]\n'
                 '[store]\nretention = "7d"\n')
    c = load_config(p)
    pol = c.policy
    assert (c.database, c.node, c.dry_run, c.retention) == ("sqlite:////tmp/x.db", "mx2", True, 7 * 86400)
    assert (pol.threshold, pol.window, pol.half_life, pol.factor, pol.max_duration) == (8, None, 900, 3, 7 * 86400)
    assert pol.base_duration("virus") is None and pol.base_duration("auth_failed") == 1800
    assert pol.base_duration("bad_helo") == 72 * 3600 and pol.subnet_bans == 0 and pol.ipv6_prefix == 56
    assert c.allow.addresses == ("192.0.2.0/24",)


def test_bad_scoring_values(tmp_path):
    import pytest

    from logban.errors import UsageError
    p = tmp_path / "c.toml"
    for body, key in (('[score]\nwindow = "10m"\nhalf_life = "5m"\n', "score.window and score.half_life"),
                      ('[ban]\nsubnet_bans = 1\n', "ban.subnet_bans"),
                      ('[ban]\nfactor = 0.5\n', "ban.factor"),
                      ('[ban]\nescalate = "yes"\n', "ban.escalate"),
                      ('[ban]\nwhat = 1\n', "ban.what"),
                      ('dry_run = 1\n', "dry_run")):
        p.write_text(body)
        with pytest.raises(UsageError, match=key.replace(".", r"\.").replace("'", "'")):
            load_config(p)



def test_horizons_weights_and_big_senders(tmp_path):
    from logban.config import Config, big_sender_entries
    p = tmp_path / "logban.toml"
    p.write_text('[score]\ntransient = 0.25\nverified_transient = 0.05\n'
                 '[score.horizons.day]\nthreshold = 20\ntransient = 0.5\n'
                 '[score.horizons.week]\nthreshold = 0\n'
                 '[score.horizons.fortnight]\nspan = "2w"\nthreshold = 30\nrepeat = true\n'
                 '[big_senders]\ndisable = ["google", "sendgrid"]\nnames = ["*.mailout.example.net"]\n')
    cfg = load_config(p)
    hs = {h.name: h for h in cfg.policy.horizons}
    assert set(hs) == {"hour", "day", "fortnight"}                  # week switched off
    assert (hs["day"].threshold, hs["day"].transient, hs["day"].span) == (20, 0.5, 86400)
    assert hs["fortnight"].repeat and hs["fortnight"].span == 14 * 86400
    assert (cfg.policy.transient, cfg.policy.verified_transient) == (0.25, 0.05)
    assert "mail-*.google.com" not in cfg.big_senders and "*.mailout.example.net" in cfg.big_senders
    assert "*.outbound.protection.outlook.com" in cfg.big_senders
    shipped = big_sender_entries()
    assert {"microsoft", "google", "yahoo", "amazonses", "mailgun", "sendgrid"} <= set(shipped)
    assert set(Config().big_senders) == {n for ns in shipped.values() for n in ns}
    p.write_text('[big_senders]\nenabled = false\nnames = ["*.mailout.example.net"]\n')
    assert load_config(p).big_senders == ("*.mailout.example.net",)


@pytest.mark.parametrize("text, key", [
    ("[score]\ntransient = 2\n", "score.transient"),
    ("[score.horizons.day]\nthreshold = -1\n", "score.horizons.day.threshold"),
    ("[score.horizons.day]\nspan = \"x\"\n", "score.horizons.day.span"),
    ("[score.horizons.day]\nsize = 1\n", "score.horizons.day.size"),
    ("[score.horizons.month]\nthreshold = 3\n", "score.horizons.month.span"),
    ("[score]\nhorizons = 3\n", "score.horizons"),
    ("[big_senders]\ndisable = [\"nobody\"]\n", "big_senders.disable"),
    ("[big_senders]\nnames = [\"bad name!\"]\n", "big_senders.names"),
    ("[big_senders]\nenabled = 1\n", "big_senders.enabled"),
])
def test_bad_horizons_and_big_senders_name_the_key(tmp_path, text, key):
    p = tmp_path / "logban.toml"
    p.write_text(text)
    with pytest.raises(UsageError, match=key.replace(".", r"\.")):
        load_config(p)
