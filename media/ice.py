"""ICE configuration: configured STUN/TURN only, coturn REST credentials, candidate addresses.

aiortc's default ICE server is a public STUN host that government networks cannot reach
(and gathering waits for it), so the server's own peer connections always get the
configured list, empty by default.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer

from cloudhall.settings import MediaSettings, TurnSettings

LOOPBACK = "127.0.0.1"


def turn_credentials(secret: str, opaque_id: str, ttl_seconds: int, now: float) -> tuple[str, str]:
    """coturn "REST API" credentials (``use-auth-secret``): ``(username, password)``.

    The username is ``expiry:opaque-id`` (expiry in Unix seconds), the password
    base64(HMAC-SHA1(secret, username)). coturn refuses them after ``expiry``.
    """
    username = f"{int(now) + int(ttl_seconds)}:{opaque_id}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


def browser_ice_servers(settings: MediaSettings, participant_id: str, now: float | None = None) -> list[dict]:
    """The ``iceServers`` list for a browser's RTCPeerConnection (STUN, then TURN with fresh credentials)."""
    servers: list[dict] = []
    if settings.stun_urls:
        servers.append({"urls": list(settings.stun_urls)})
    turn: TurnSettings = settings.turn
    if turn.urls and turn.secret:
        username, credential = turn_credentials(
            turn.secret, participant_id, turn.ttl_seconds, time.time() if now is None else now
        )
        servers.append({"urls": list(turn.urls), "username": username, "credential": credential})
    return servers


def server_configuration(settings: MediaSettings) -> RTCConfiguration:
    """RTCConfiguration for the server's own peer connections: the configured STUN URLs, never aiortc's default.

    TURN is for the browsers (an outlet behind NAT relays *to* the server); the server is
    the reachable side (its own address, or ``public_ip`` behind 1:1 NAT), so it gathers
    no relay candidates and never waits for a TURN allocation.

    ``max-bundle``: with aiortc's default ("balanced") an answerer puts the second audio
    m-line on the first audio m-line's transport, then the BUNDLE group discards that
    transport and the second audio m-line never connects (aiortc 1.16). Browsers bundle
    everything anyway.
    """
    servers = [RTCIceServer(urls=list(settings.stun_urls))] if settings.stun_urls else []
    return RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def host_addresses(settings: MediaSettings, discovered: list[str]) -> list[str]:
    """Local addresses to gather host candidates on.

    ``settings.host_addresses`` if set, else every interface aioice finds; plus loopback
    when ``allow_loopback`` is set (aioice never offers 127.0.0.1 on its own, so a test in
    a loopback-only namespace, or a single-machine demo, would never connect).
    """
    addresses = list(settings.host_addresses) if settings.host_addresses else list(discovered)
    if settings.allow_loopback and LOOPBACK not in addresses:
        addresses.append(LOOPBACK)
    if not settings.allow_loopback:
        addresses = [a for a in addresses if a != LOOPBACK and a != "::1"]
    return addresses
