"""The configuration refuses unsafe or impossible values at start-up, naming the setting."""

from pathlib import Path

import pytest

from ostiary.config import ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sessiond.toml"
    path.write_text(text)
    return path


def test_defaults_match_the_documented_contract() -> None:
    s = load_settings(None)
    assert s.server.listen == "127.0.0.1:8700"
    assert s.server.admin_listen == "unix:/run/ostiary/admin.sock"
    assert (s.tokens.mode, s.tokens.algorithm, s.tokens.ttl) == ("jwt", "ES256", 900)
    assert (s.tokens.idle_timeout, s.tokens.absolute_timeout, s.tokens.clock_skew) == (1800, 43200, 60)
    assert s.cache.ttl == 2.0
    assert s.store.revocations_url == "redis://127.0.0.1:6380/0"


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[tokens]\nclock_skew = 301\n", "tokens.clock_skew"),
        ("[cache]\nttl = 5.5\n", "cache.ttl"),
        ("[tokens]\nalgorithm = \"none\"\n", "tokens.algorithm"),
        ("[tokens]\nalgorithm = \"HS512\"\n", "tokens.algorithm"),
        ("[tokens]\nidle_timeout = 50000\n", "idle_timeout"),
        ("[server]\nlisten = \"0.0.0.0\"\n", "server.listen"),
        ("[server]\nadmin_listen = \"unix:relative.sock\"\n", "server.admin_listen"),
        ("[server]\nsocket_mode = \"0666\"\n", "server.socket_mode"),
        ("[store]\nsessions_url = \"http://x\"\n", "store.sessions_url"),
        ("[store]\nrevocations_url = \"redis+sentinel://h:26379/mymaster\"\n", "store.revocations_url"),
        ("[clients]\nrp = \"plain-secret\"\n", "clients"),
        ("[oidc]\nenabled = true\n", "oidc"),
        ("[oidc]\nenabled = true\nissuer = \"i\"\naudience = \"a\"\njwks_file = \"/x\"\nalgorithms = [\"HS256\"]\n",
         "oidc"),
        ("[unknown]\nx = 1\n", "unknown"),
        ("[tokens]\nttl = \"soon\"\n", "tokens.ttl"),
        ("[store]\npool_size = 8\nwarm_connections = 9\n", "warm_connections"),
        ("[store]\nwarm_connections = -1\n", "store.warm_connections"),
        ("[store]\nsessions_url = \"rediss://h:6390/0?ssl_cert_reqs=none\"\n", "ssl_cert_reqs"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(tmp_path: Path, toml: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, toml))
    assert needle in str(info.value)


def test_clock_skew_300_is_the_maximum_accepted(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "[tokens]\nclock_skew = 300\n")).tokens.clock_skew == 300


def test_environment_overrides_merge_with_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[cache]\nttl = 1.0\nmax_entries = 7\n[store]\nusername = \"sessiond\"\n")
    monkeypatch.setenv("OSTIARY_CACHE__TTL", "0")
    monkeypatch.setenv("OSTIARY_STORE__SESSIONS_URL", "redis://127.0.0.1:7000/0")
    monkeypatch.setenv("OSTIARY_TOKENS__AUDIENCE", '["api", "admin"]')
    s = load_settings(path)
    assert s.cache.ttl == 0.0 and s.cache.max_entries == 7
    assert s.store.sessions_url == "redis://127.0.0.1:7000/0" and s.store.username == "sessiond"
    assert s.tokens.audience == ["api", "admin"]


def test_environment_cannot_sneak_in_an_unsafe_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSTIARY_TOKENS__CLOCK_SKEW", "900")
    with pytest.raises(ConfigError, match="clock_skew"):
        load_settings(None)


def test_missing_and_broken_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[tokens\n"))
