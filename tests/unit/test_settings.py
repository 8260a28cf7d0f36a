"""Settings from CLOUDHALL_* variables: defaults, parsing, and one clear message per bad value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloudhall.settings import Settings, SettingsError


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"CLOUDHALL_DATA_DIR": str(tmp_path), **{f"CLOUDHALL_{k}": v for k, v in values.items()}}


def test_defaults_are_the_embedded_mode(tmp_path: Path) -> None:
    settings = Settings.from_env(env(tmp_path))
    assert settings.http.host == "127.0.0.1" and settings.http.port == 8080
    assert settings.database.url == f"sqlite+aiosqlite:///{tmp_path / 'cloudhall.db'}"
    assert settings.redis.url == ""
    assert settings.media.recordings_dir == tmp_path / "recordings"
    assert settings.media.udp_receive_buffer_kb == 1024
    assert settings.media.wakeup_coalesce_ms == 2.0
    assert settings.http.cookie_secure is False
    # A random secret is generated once and kept, so sessions survive a restart.
    assert len(settings.http.secret_key) >= 32
    assert Settings.from_env(env(tmp_path)).http.secret_key == settings.http.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_values_are_parsed(tmp_path: Path) -> None:
    settings = Settings.from_env(
        env(
            tmp_path,
            HOST="0.0.0.0",
            PORT="9000",
            SECRET_KEY="k" * 40,
            COOKIE_SECURE="yes",
            DATABASE_URL="postgresql://u@db/cloudhall",
            REDIS_URL="redis://127.0.0.1:6379/2",
            TURN_SECRET="s",
            TURN_URLS="turn:turn.example:3478?transport=udp, turns:turn.example:5349",
            STUN_URLS='["stun:stun.example:3478"]',
            MEDIA_HOST_ADDRESSES="10.0.0.5",
            UDP_RECEIVE_BUFFER_KB="4096",
            MEDIA_WAKEUP_COALESCE_MS="0.5",
            LOGIN_MAX_FAILURES="7",
            LOG_LEVEL="debug",
        )
    )
    assert settings.http.port == 9000 and settings.http.cookie_secure is True
    assert settings.database.url == "postgresql+asyncpg://u@db/cloudhall"
    assert settings.media.turn.urls == ("turn:turn.example:3478?transport=udp", "turns:turn.example:5349")
    assert settings.media.stun_urls == ("stun:stun.example:3478",)
    assert settings.media.host_addresses == ("10.0.0.5",)
    assert settings.media.udp_receive_buffer_kb == 4096
    assert settings.media.wakeup_coalesce_ms == 0.5
    assert settings.http.login_max_failures == 7
    assert settings.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PORT", "eighty", "CLOUDHALL_PORT"),
        ("PORT", "70000", "CLOUDHALL_PORT"),
        ("COOKIE_SECURE", "maybe", "CLOUDHALL_COOKIE_SECURE"),
        ("DATABASE_URL", "mysql://x/y", "CLOUDHALL_DATABASE_URL"),
        ("REDIS_URL", "http://redis", "CLOUDHALL_REDIS_URL"),
        ("SECRET_KEY", "short", "CLOUDHALL_SECRET_KEY"),
        ("SESSION_TTL_SECONDS", "0", "CLOUDHALL_SESSION_TTL_SECONDS"),
        ("LOGIN_MAX_FAILURES", "-1", "CLOUDHALL_LOGIN_MAX_FAILURES"),
        ("LOGIN_LOCKOUT_SECONDS", "soon", "CLOUDHALL_LOGIN_LOCKOUT_SECONDS"),
        ("RING_TIMEOUT_SECONDS", "0", "CLOUDHALL_RING_TIMEOUT_SECONDS"),
        ("RECONNECT_GRACE_SECONDS", "nan", "CLOUDHALL_RECONNECT_GRACE_SECONDS"),  # passed "positive" once
        ("QUEUE_LIMIT_SECONDS", "inf", "CLOUDHALL_QUEUE_LIMIT_SECONDS"),
        ("PORT", "65536", "CLOUDHALL_PORT"),
        ("STUN_URLS", "turn:x", "CLOUDHALL_STUN_URLS"),
        ("TURN_URLS", "stun:x", "CLOUDHALL_TURN_URLS"),
        ("TURN_URLS", "turn:x:3478", "CLOUDHALL_TURN_SECRET"),
        ("PUBLIC_IP", "not-an-ip", "CLOUDHALL_PUBLIC_IP"),
        ("MEDIA_HOST_ADDRESSES", "10.0.0.1, nope", "CLOUDHALL_MEDIA_HOST_ADDRESSES"),
        ("LOG_LEVEL", "LOUD", "CLOUDHALL_LOG_LEVEL"),
        ("UDP_RECEIVE_BUFFER_KB", "0", "CLOUDHALL_UDP_RECEIVE_BUFFER_KB"),
        ("UDP_RECEIVE_BUFFER_KB", "1099511627776", "CLOUDHALL_UDP_RECEIVE_BUFFER_KB"),  # overflowed setsockopt per call
        ("MEDIA_WAKEUP_COALESCE_MS", "11", "CLOUDHALL_MEDIA_WAKEUP_COALESCE_MS"),
        ("MEDIA_WAKEUP_COALESCE_MS", "nan", "CLOUDHALL_MEDIA_WAKEUP_COALESCE_MS"),
        ("MEDIA_WAKEUP_COALESCE_MS", "-1", "CLOUDHALL_MEDIA_WAKEUP_COALESCE_MS"),
        ("STUN_URLS", "[1, 2]", "CLOUDHALL_STUN_URLS"),
    ],
)
def test_a_bad_value_names_its_variable(tmp_path: Path, variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env(tmp_path, **{variable: value}))
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_every_setting_is_documented() -> None:
    """docs/operations.md lists every variable that Settings.from_env reads."""
    root = Path(__file__).resolve().parents[2]
    source = (root / "cloudhall" / "settings.py").read_text("utf-8")
    variables = set(re.findall(r'self\.get\(\s*"([A-Z_]+)"', source))
    assert len(variables) >= 25
    docs = (root / "docs" / "operations.md").read_text("utf-8")
    missing = sorted(v for v in variables if f"`CLOUDHALL_{v}`" not in docs)
    assert missing == [], f"add these to docs/operations.md: {missing}"


def test_an_unknown_or_retired_variable_is_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="cloudhall.settings"):
        settings = Settings.from_env(env(tmp_path, SUBSCRIBER_QUEUE_FRAMES="60", PROT="9000"))
    assert settings.media.subscriber_backlog_kb == 256  # the retired setting changed nothing
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "CLOUDHALL_PROT" in warnings[0] and "CLOUDHALL_SUBSCRIBER_QUEUE_FRAMES" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="cloudhall.settings"):
        Settings.from_env({**env(tmp_path, PORT="9000"), "CLOUDHALL_TEST_REDIS_URL": "redis://x"})
    assert not caplog.records, "known settings and the test suite's own variables are not warned about"
