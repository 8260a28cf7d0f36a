"""Cloud Hall media library: aiortc sessions, passthrough forwarding, ICE; entry point media.server.MediaServer."""
