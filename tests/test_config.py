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
    ("[parse]\nspeed = 1\n", "parse.'speed'"),
    ("[firewal]\n", "'firewal'"),
    ("[parse\n", "not valid TOML"),
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
