"""ICE configuration: coturn REST credentials, browser ICE servers, candidate addresses."""

from __future__ import annotations

from cloudhall.settings import MediaSettings, TurnSettings
from media import ice


def test_turn_credentials_match_a_known_vector():
    # Expected value computed independently:
    #   echo -n "1700000000:outlet-42" | openssl dgst -sha1 -hmac "north-county-secret" -binary | base64
    username, password = ice.turn_credentials("north-county-secret", "outlet-42", 3600, now=1699996400.7)
    assert username == "1700000000:outlet-42"
    assert password == "KvCzIWQmNGMZ43cULMhw3Mb3a94="


def test_browser_ice_servers_are_only_the_configured_ones():
    assert ice.browser_ice_servers(MediaSettings(), "outlet-1") == []
    settings = MediaSettings(
        stun_urls=("stun:stun.county.example:3478",),
        turn=TurnSettings(secret="s3cret", urls=("turn:turn.county.example:3478?transport=udp",), ttl_seconds=600),
    )
    servers = ice.browser_ice_servers(settings, "agent-7", now=1000)
    assert servers[0] == {"urls": ["stun:stun.county.example:3478"]}
    assert servers[1]["urls"] == ["turn:turn.county.example:3478?transport=udp"]
    assert servers[1]["username"] == "1600:agent-7"
    assert servers[1]["credential"] == ice.turn_credentials("s3cret", "agent-7", 600, 1000)[1]


def test_server_configuration_never_falls_back_to_public_stun():
    configuration = ice.server_configuration(MediaSettings())
    assert configuration.iceServers == []
    assert configuration.bundlePolicy.value == "max-bundle"
    configured = ice.server_configuration(MediaSettings(
        stun_urls=("stun:stun.county.example:3478",),
        turn=TurnSettings(secret="s", urls=("turn:turn.county.example:3478",)),
    ))
    assert [server.urls for server in configured.iceServers] == [["stun:stun.county.example:3478"]]


def test_host_addresses_add_loopback_only_when_allowed():
    assert ice.host_addresses(MediaSettings(), ["10.1.2.3"]) == ["10.1.2.3", "127.0.0.1"]
    assert ice.host_addresses(MediaSettings(allow_loopback=False), ["10.1.2.3", "127.0.0.1"]) == ["10.1.2.3"]
    assert ice.host_addresses(MediaSettings(host_addresses=("192.0.2.9",), allow_loopback=False), ["10.1.2.3"]) == [
        "192.0.2.9"
    ]
