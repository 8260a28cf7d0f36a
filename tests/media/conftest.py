"""Fixtures for the media tests: a MediaServer per test, real aiortc client peers, cleanup."""

from __future__ import annotations

import sys
from typing import Any

import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pytest

from cloudhall.settings import MediaSettings
from media.server import MediaServer
from tests.media.peers import Client, EventLog, MemorySink


class MediaEnv:
    """Builds servers and clients for one test and closes them all at the end."""

    def __init__(self) -> None:
        self.servers: list[MediaServer] = []
        self.clients: list[Client] = []

    def server(self, sink: Any = None, events: EventLog | None = None, **settings: Any) -> MediaServer:
        server = MediaServer(
            MediaSettings(**settings),
            sink_factory=(lambda session_id: sink) if sink is not None else None,
            events=events,
        )
        self.servers.append(server)
        return server

    def client(self, server: MediaServer, session_id: str, participant: str,
               sources: dict, wants: list[str]) -> Client:
        client = Client(server, session_id, participant, sources, wants)
        self.clients.append(client)
        return client

    async def aclose(self) -> None:
        for client in self.clients:
            await client.close()
        for server in self.servers:
            await server.close()


@pytest.fixture
async def media_env():
    env = MediaEnv()
    try:
        yield env
    finally:
        await env.aclose()


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def events() -> EventLog:
    return EventLog()


class CodecConstructions:
    """Who constructed an encoder or a decoder: the RTCRtpSender, or the decoder's output queue."""

    def __init__(self) -> None:
        self.encoder_owners: list[Any] = []
        self.decoder_outputs: list[Any] = []


@pytest.fixture
def codec_constructions(monkeypatch: pytest.MonkeyPatch) -> CodecConstructions:
    """Wrap aiortc's get_encoder/get_decoder where aiortc looks them up, recording the caller."""
    record = CodecConstructions()
    real_encoder = aiortc.rtcrtpsender.get_encoder
    real_decoder = aiortc.rtcrtpreceiver.get_decoder

    def get_encoder(codec: Any) -> Any:
        record.encoder_owners.append(sys._getframe(1).f_locals.get("self"))
        return real_encoder(codec)

    def get_decoder(codec: Any) -> Any:
        record.decoder_outputs.append(sys._getframe(1).f_locals.get("output_q"))
        return real_decoder(codec)

    monkeypatch.setattr(aiortc.rtcrtpsender, "get_encoder", get_encoder)
    monkeypatch.setattr(aiortc.rtcrtpreceiver, "get_decoder", get_decoder)
    return record
