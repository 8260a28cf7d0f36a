"""Settings: one object read from ``CLOUDHALL_*`` environment variables.

Each subsystem receives only its own section (``settings.media``, ``settings.signaling``,
...) through its constructor; nothing in the project reads ``os.environ`` except
:func:`Settings.from_env`, which the CLI calls once at start.

A bad value fails at start with :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar
from urllib.parse import urlparse

PREFIX = "CLOUDHALL_"
TEST_PREFIX = "CLOUDHALL_TEST_"  # read by the test suite, not by the server

log = logging.getLogger(__name__)

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names the variable and the value expected."""


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    secret_key: str = ""
    cookie_secure: bool = False
    session_ttl_seconds: int = 12 * 3600
    # Failed logins per account+address before the account is throttled, and for how long.
    login_max_failures: int = 5
    login_lockout_seconds: int = 300
    # Largest request body accepted by any endpoint (uploads have their own limit).
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite+aiosqlite:///var/cloudhall.db"
    echo: bool = False


@dataclass(frozen=True)
class RedisSettings:
    # Empty: embedded in-process mode (one node). Set: queue, presence and events in Redis.
    url: str = ""
    key_prefix: str = "cloudhall:"


@dataclass(frozen=True)
class SignalingSettings:
    # How long an outlet or agent that dropped keeps its queue place or its call.
    reconnect_grace_seconds: float = 60.0
    # How long an offered call rings at an agent before it goes back to the front of the queue.
    ring_timeout_seconds: float = 20.0
    # Calls waiting longer than this end as "abandoned".
    queue_limit_seconds: float = 30 * 60
    # Agents that miss heartbeats for this long become offline.
    presence_timeout_seconds: float = 45.0
    heartbeat_interval_seconds: float = 15.0
    # Largest Socket.IO message accepted.
    max_message_bytes: int = 256 * 1024
    node_id: str = ""


@dataclass(frozen=True)
class TurnSettings:
    # coturn "REST API" shared secret (use-auth-secret / static-auth-secret); empty: no TURN.
    secret: str = ""
    urls: tuple[str, ...] = ()
    ttl_seconds: int = 3600


@dataclass(frozen=True)
class MediaSettings:
    # STUN/TURN URLs handed to the server's own peer connections and to browsers. Empty by
    # default: aiortc's built-in public STUN host is unreachable from government networks.
    stun_urls: tuple[str, ...] = ()
    turn: TurnSettings = field(default_factory=TurnSettings)
    # Public address of a server behind 1:1 NAT, announced in its ICE candidates.
    public_ip: str = ""
    # Local addresses the server gathers ICE candidates on (empty: every interface, plus
    # loopback when allow_loopback is set, which tests and single-machine demos need).
    host_addresses: tuple[str, ...] = ()
    allow_loopback: bool = True
    recordings_dir: Path = Path("var/recordings")
    # Bytes a subscriber's socket may hold back (the kernel refused them) before its packets are
    # dropped and it restarts at a keyframe: no queue per subscriber grows.
    subscriber_backlog_kb: int = 256
    # Kernel receive buffer of each media socket (SO_RCVBUF): datagrams that arrive while the
    # event loop is busy wait there; when it is full the kernel drops them. Linux caps it at
    # net.core.rmem_max (docs/operations.md).
    udp_receive_buffer_kb: int = 1024
    # Under load the event loop gathers this long a window of packets per wake-up instead of
    # waking for each (0: off). Adds at most this much delay per hop; 1 ms saved ~9 % CPU against
    # none, 2 ms ~3 % more per packet at 30 calls (docs/operations.md).
    wakeup_coalesce_ms: float = 2.0


@dataclass(frozen=True)
class Settings:
    http: HttpSettings = field(default_factory=HttpSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    signaling: SignalingSettings = field(default_factory=SignalingSettings)
    media: MediaSettings = field(default_factory=MediaSettings)
    data_dir: Path = Path("var")
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        """Build settings from ``CLOUDHALL_*`` variables; raise :class:`SettingsError` on a bad one.

        A ``CLOUDHALL_*`` variable that no setting reads is logged as a warning, not refused
        (an old deployment file must still start after a setting is retired).
        """
        reader = _EnvReader(env)
        settings = reader.settings()
        unknown = reader.unknown()
        if unknown:
            log.warning("ignored unknown setting(s): %s (see docs/operations.md for the list)", ", ".join(unknown))
        return settings


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false")


def _parse_list(raw: str) -> tuple[str, ...]:
    raw = raw.strip()
    if raw.startswith("["):
        value = json.loads(raw)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a JSON list of strings")
        return tuple(v.strip() for v in value if v.strip())
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _within(parse: Callable[[str], T], low: float, high: float, what: str) -> Callable[[str], T]:
    """``parse``, then refuse a value outside [low, high] (nan included) naming ``what``."""
    def inner(raw: str) -> T:
        value = parse(raw)
        if not low <= value <= high:  # type: ignore[operator]
            raise ValueError(f"expected {what} from {low:g} to {high:g}")
        return value

    return inner


def _positive(parse: Callable[[str], T]) -> Callable[[str], T]:
    def inner(raw: str) -> T:
        value = parse(raw)
        if not 0 < value < math.inf:  # type: ignore[operator]  # also refuses nan and inf
            raise ValueError("expected a positive number")
        return value

    return inner


UDP_RECEIVE_BUFFER_KB_MAX = 1024 * 1024  # 1 GiB: setsockopt takes a C int of bytes


def _parse_db_url(raw: str) -> str:
    scheme = urlparse(raw).scheme
    if scheme not in ("sqlite+aiosqlite", "postgresql+asyncpg", "sqlite", "postgresql", "postgres"):
        raise ValueError("expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
    if scheme == "sqlite":
        raw = "sqlite+aiosqlite" + raw[len("sqlite"):]
    elif scheme in ("postgresql", "postgres"):
        raw = "postgresql+asyncpg" + raw[len(scheme):]
    return raw


def _parse_redis_url(raw: str) -> str:
    if raw and urlparse(raw).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected redis://HOST:PORT/DB (or empty for the embedded mode)")
    return raw


def _parse_ip(raw: str) -> str:
    if raw:
        ipaddress.ip_address(raw)
    return raw


def _parse_ip_list(raw: str) -> tuple[str, ...]:
    items = _parse_list(raw)
    for item in items:
        ipaddress.ip_address(item)
    return items


def _parse_ice_urls(prefixes: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    def inner(raw: str) -> tuple[str, ...]:
        items = _parse_list(raw)
        for item in items:
            if not item.startswith(prefixes):
                raise ValueError(f"every URL must start with one of {', '.join(prefixes)}")
        return items

    return inner


def _parse_log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected DEBUG, INFO, WARNING or ERROR")
    return level


class _EnvReader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self.read: set[str] = set()

    def unknown(self) -> list[str]:
        """``CLOUDHALL_*`` variables that no setting reads (a typo, or a setting since removed)."""
        return sorted(var for var in self._env
                      if var.startswith(PREFIX) and var not in self.read and not var.startswith(TEST_PREFIX))

    def get(self, name: str, parse: Callable[[str], Any], default: Any) -> Any:
        var = PREFIX + name
        self.read.add(var)
        if var not in self._env:
            return default
        raw = self._env[var]
        try:
            return parse(raw)
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise SettingsError(f"{var}={raw!r} is invalid: {exc}") from None

    def settings(self) -> Settings:
        data_dir = Path(self.get("DATA_DIR", str, "var"))
        secret = self.get("SECRET_KEY", str, "")
        if secret and len(secret) < 32:
            raise SettingsError(
                f"{PREFIX}SECRET_KEY is too short ({len(secret)} characters): use at least 32 random characters"
            )
        http = HttpSettings(
            host=self.get("HOST", str, "127.0.0.1"),
            port=self.get("PORT", _within(int, 0, 65535, "a port number"), 8080),
            secret_key=secret or _secret_from_file(data_dir),
            cookie_secure=self.get("COOKIE_SECURE", _parse_bool, False),
            session_ttl_seconds=self.get("SESSION_TTL_SECONDS", _positive(int), 12 * 3600),
            login_max_failures=self.get("LOGIN_MAX_FAILURES", _positive(int), 5),
            login_lockout_seconds=self.get("LOGIN_LOCKOUT_SECONDS", _positive(int), 300),
            max_body_bytes=self.get("MAX_BODY_BYTES", _positive(int), 1024 * 1024),
        )
        database = DatabaseSettings(
            url=self.get(
                "DATABASE_URL", _parse_db_url, f"sqlite+aiosqlite:///{data_dir / 'cloudhall.db'}"
            ),
            echo=self.get("DATABASE_ECHO", _parse_bool, False),
        )
        redis = RedisSettings(
            url=self.get("REDIS_URL", _parse_redis_url, ""),
            key_prefix=self.get("REDIS_PREFIX", str, "cloudhall:"),
        )
        signaling = SignalingSettings(
            reconnect_grace_seconds=self.get("RECONNECT_GRACE_SECONDS", _positive(float), 60.0),
            ring_timeout_seconds=self.get("RING_TIMEOUT_SECONDS", _positive(float), 20.0),
            queue_limit_seconds=self.get("QUEUE_LIMIT_SECONDS", _positive(float), 1800.0),
            presence_timeout_seconds=self.get("PRESENCE_TIMEOUT_SECONDS", _positive(float), 45.0),
            heartbeat_interval_seconds=self.get("HEARTBEAT_INTERVAL_SECONDS", _positive(float), 15.0),
            max_message_bytes=self.get("MAX_MESSAGE_BYTES", _positive(int), 256 * 1024),
            node_id=self.get("NODE_ID", str, ""),
        )
        turn = TurnSettings(
            secret=self.get("TURN_SECRET", str, ""),
            urls=self.get("TURN_URLS", _parse_ice_urls(("turn:", "turns:")), ()),
            ttl_seconds=self.get("TURN_TTL_SECONDS", _positive(int), 3600),
        )
        if turn.urls and not turn.secret:
            raise SettingsError(f"{PREFIX}TURN_URLS is set but {PREFIX}TURN_SECRET is empty")
        media = MediaSettings(
            stun_urls=self.get("STUN_URLS", _parse_ice_urls(("stun:", "stuns:")), ()),
            turn=turn,
            public_ip=self.get("PUBLIC_IP", _parse_ip, ""),
            host_addresses=self.get("MEDIA_HOST_ADDRESSES", _parse_ip_list, ()),
            allow_loopback=self.get("MEDIA_ALLOW_LOOPBACK", _parse_bool, True),
            recordings_dir=Path(self.get("RECORDINGS_DIR", str, str(data_dir / "recordings"))),
            subscriber_backlog_kb=self.get("SUBSCRIBER_BACKLOG_KB", _positive(int), 256),
            udp_receive_buffer_kb=self.get("UDP_RECEIVE_BUFFER_KB", _within(int, 1, UDP_RECEIVE_BUFFER_KB_MAX, "KiB"), 1024),
            wakeup_coalesce_ms=self.get("MEDIA_WAKEUP_COALESCE_MS", _within(float, 0, 10, "milliseconds (0: off)"), 2.0),
        )
        return Settings(
            http=http,
            database=database,
            redis=redis,
            signaling=signaling,
            media=media,
            data_dir=data_dir,
            log_level=self.get("LOG_LEVEL", _parse_log_level, "INFO"),
        )


def _secret_from_file(data_dir: Path) -> str:
    """Embedded default: a random key kept in ``DATA_DIR/secret_key`` so sessions survive restarts."""
    path = data_dir / "secret_key"
    try:
        existing = path.read_text().strip()
        if len(existing) >= 32:
            return existing
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key
