// One participant's media connection to the server. Owns the RTCPeerConnection and replaces
// it with a NEW one in the same session when the transport fails or goes silent (the server,
// aiortc, has no ICE restart). Every m-line is offered up front — own sources sendonly
// (a source without a track yet, e.g. the screen, is offered too and filled by replaceTrack
// later, so starting a share never renegotiates) and the other side's sources recvonly —
// and the offer names each m-line's role by mid (`tracks`), as the media contract asks.

import { SignalError } from "./socket.js";

const KINDS = { camera: "video", screen: "video", microphone: "audio" };
const GATHER_TIMEOUT_MS = 3000;
const WATCH_INTERVAL_MS = 1000;
const SILENCE_LIMIT_MS = 8000; // no packet at all from the server for this long: the link is dead
const DISCONNECTED_LIMIT_MS = 4000;
const RETRY_DELAYS_MS = [500, 1000, 2000, 4000, 8000];

// Sender settings per weak-link step (0 normal … 3 audio only).
export const LADDER = [
  { camera: { active: true, maxBitrate: 600_000, scaleResolutionDownBy: 1, maxFramerate: 24 },
    screen: { active: true, maxBitrate: 1_200_000, scaleResolutionDownBy: 1, maxFramerate: 10 } },
  { camera: { active: true, maxBitrate: 200_000, scaleResolutionDownBy: 2, maxFramerate: 12 },
    screen: { active: true, maxBitrate: 600_000, scaleResolutionDownBy: 1, maxFramerate: 5 } },
  { camera: { active: false },
    screen: { active: true, maxBitrate: 300_000, scaleResolutionDownBy: 1, maxFramerate: 2 } },
  { camera: { active: false }, screen: { active: false } },
];

function preferCodecs(transceiver, kind) {
  if (!transceiver.setCodecPreferences || !RTCRtpReceiver.getCapabilities) return;
  const wanted = kind === "video" ? "video/vp8" : "audio/opus";
  const caps = RTCRtpReceiver.getCapabilities(kind);
  const codecs = caps ? caps.codecs.filter((c) => c.mimeType.toLowerCase() === wanted) : [];
  if (codecs.length) transceiver.setCodecPreferences(codecs);
}

async function gathered(pc) {
  if (pc.iceGatheringState === "complete") return;
  await new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

export class Peer extends EventTarget {
  /**
   * @param {object} o
   * @param {import("./socket.js").Signal} o.signal
   * @param {string} o.sessionId
   * @param {object[]} o.iceServers from the server (never a public default)
   * @param {Object<string, MediaStreamTrack|null>} o.sources own sources to offer: camera, microphone, screen
   * @param {string[]} o.receive the other side's sources wanted: camera, screen, microphone
   * @param {string} [o.offerEvent]
   */
  constructor({ signal, sessionId, iceServers = [], sources, receive, offerEvent = "media:offer" }) {
    super();
    this.signal = signal;
    this.sessionId = sessionId;
    this.iceServers = iceServers;
    this.sources = { ...sources };
    this.receive = [...receive];
    this.offerEvent = offerEvent;
    this.pc = null;
    this.senders = {};
    this.remoteTracks = {};
    this.step = 0;
    this.epoch = 0;
    this.closed = false;
    this.state = "new";
    this.retry = 0;
    this.watchTimer = null;
    this.lastActivity = 0;
    this.lastBytes = -1;
    this.disconnectedSince = 0;
    this.prevStats = null;
  }

  #setState(state, detail = {}) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, epoch: this.epoch, ...detail } }));
  }

  /** Open the media connection (first time) — resolves once the answer is applied. */
  async start() {
    await this.#open();
    this.watchTimer = setInterval(() => this.#watch(), WATCH_INTERVAL_MS);
  }

  async #open() {
    this.epoch += 1;
    const epoch = this.epoch;
    const pc = new RTCPeerConnection({ iceServers: this.iceServers, bundlePolicy: "max-bundle" });
    this.pc = pc;
    this.senders = {};
    this.lastBytes = -1;
    this.lastActivity = performance.now();
    this.disconnectedSince = 0;
    this.prevStats = null;
    const roles = new Map(); // transceiver -> role
    const stream = new MediaStream();
    for (const [source, track] of Object.entries(this.sources)) {
      const kind = KINDS[source];
      const transceiver = pc.addTransceiver(track || kind, { direction: "sendonly", streams: [stream] });
      preferCodecs(transceiver, kind);
      this.senders[source] = transceiver.sender;
      roles.set(transceiver, source);
    }
    for (const source of this.receive) {
      const kind = KINDS[source];
      const transceiver = pc.addTransceiver(kind, { direction: "recvonly" });
      preferCodecs(transceiver, kind);
      roles.set(transceiver, `remote:${source}`);
    }
    pc.addEventListener("track", (event) => {
      const role = roles.get(event.transceiver);
      if (!role || !role.startsWith("remote:")) return;
      const source = role.slice("remote:".length);
      this.remoteTracks[source] = event.track;
      this.dispatchEvent(new CustomEvent("track", { detail: { source, track: event.track } }));
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc !== this.pc) return;
      if (pc.connectionState === "connected") {
        this.retry = 0;
        this.#setState("connected");
        this.applyStep(this.step).catch(() => {});
      } else if (pc.connectionState === "failed") {
        this.#reconnect("failed");
      }
    });
    this.#setState(epoch === 1 ? "connecting" : "reconnecting");
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    await gathered(pc);
    const tracks = {};
    for (const [transceiver, role] of roles) tracks[transceiver.mid] = role;
    const answer = await this.signal.request(
      this.offerEvent,
      { call_id: this.sessionId, sdp: pc.localDescription.sdp, type: "offer", tracks },
      { timeoutMs: 15000 },
    );
    // The server hands its ICE servers (TURN credentials) out with the answer: they serve
    // every later peer connection of this call (docs/ui.md: wanted before the first offer).
    if (Array.isArray(answer.ice_servers) && answer.ice_servers.length) this.iceServers = answer.ice_servers;
    if (pc !== this.pc || this.closed) {
      pc.close();
      return;
    }
    await pc.setRemoteDescription({ type: answer.type || "answer", sdp: answer.sdp });
  }

  /** Replace an own source's track (null stops sending it) without renegotiation. */
  async replaceTrack(source, track) {
    this.sources[source] = track;
    const sender = this.senders[source];
    if (sender) {
      await sender.replaceTrack(track);
      await this.applyStep(this.step);
    }
  }

  /** Apply a weak-link step (0 normal … 3 audio only) to the video senders. */
  async applyStep(step) {
    this.step = step;
    for (const source of ["camera", "screen"]) {
      const sender = this.senders[source];
      if (!sender) continue;
      const params = sender.getParameters();
      if (!params.encodings || !params.encodings.length) continue;
      const want = { ...LADDER[step][source] };
      const sharing = Boolean(this.sources.screen);
      // While a document is shared it is what the agent reads: the screen gets the bandwidth
      // first (priority) and the camera gives some up.
      if (source === "camera" && sharing && want.maxBitrate) want.maxBitrate = Math.min(want.maxBitrate, 250_000);
      for (const encoding of params.encodings) {
        encoding.active = want.active;
        encoding.priority = source === "screen" || !sharing ? "high" : "low";
        encoding.networkPriority = encoding.priority;
        for (const key of ["maxBitrate", "scaleResolutionDownBy", "maxFramerate"]) {
          if (want[key] !== undefined) encoding[key] = want[key];
        }
      }
      try {
        await sender.setParameters(params);
      } catch (err) {
        console.warn("setParameters for", source, "failed:", err);
      }
    }
  }

  /** Reconnect now (e.g. the page came back online). */
  restart(reason = "requested") {
    this.#reconnect(reason);
  }

  async #reconnect(reason) {
    if (this.closed || this.reconnecting) return;
    this.reconnecting = true;
    console.warn(`media: new peer connection for call ${this.sessionId} (${reason})`);
    this.#setState("reconnecting", { reason });
    const old = this.pc;
    this.pc = null;
    if (old) old.close();
    while (!this.closed) {
      const delay = RETRY_DELAYS_MS[Math.min(this.retry, RETRY_DELAYS_MS.length - 1)];
      this.retry += 1;
      await new Promise((resolve) => setTimeout(resolve, delay));
      if (this.closed) break;
      try {
        await this.#open();
        break;
      } catch (err) {
        if (err instanceof SignalError && ["not_found", "conflict", "forbidden"].includes(err.code)) {
          // The call is over (or no longer ours): stop trying and let the page decide.
          this.#setState("failed", { reason: err.message, code: err.code });
          this.reconnecting = false;
          return;
        }
        if (this.pc) this.pc.close();
        this.pc = null;
        this.dispatchEvent(new CustomEvent("retry", { detail: { error: err } }));
      }
    }
    this.reconnecting = false;
  }

  async #watch() {
    const pc = this.pc;
    if (!pc || this.closed || this.reconnecting) return;
    const now = performance.now();
    // close() fires no event: notice it (and a dead transport) by polling.
    if (pc.connectionState === "closed" || pc.signalingState === "closed") {
      this.#reconnect("closed");
      return;
    }
    if (pc.connectionState === "failed") {
      this.#reconnect("failed");
      return;
    }
    if (pc.connectionState === "disconnected") {
      this.disconnectedSince = this.disconnectedSince || now;
      if (now - this.disconnectedSince > DISCONNECTED_LIMIT_MS) {
        this.#reconnect("disconnected");
        return;
      }
    } else {
      this.disconnectedSince = 0;
    }
    let sample;
    try {
      sample = await this.sample();
    } catch {
      return;
    }
    if (pc !== this.pc) return;
    if (sample.bytesReceived !== this.lastBytes) {
      this.lastBytes = sample.bytesReceived;
      this.lastActivity = now;
    } else if (pc.connectionState === "connected" && now - this.lastActivity > SILENCE_LIMIT_MS) {
      this.#reconnect("silent");
      return;
    }
    this.dispatchEvent(new CustomEvent("stats", { detail: sample }));
  }

  /**
   * Network figures for the indicator and the ladder: round trip (ms), loss both ways (%),
   * bitrates (kbit/s), available send rate, and per received source its frames decoded and size.
   */
  async sample() {
    const pc = this.pc;
    const report = await pc.getStats();
    const byTrack = {};
    for (const [source, track] of Object.entries(this.remoteTracks)) byTrack[track.id] = source;
    const out = {
      at: performance.now(), rtt: null, lossIn: 0, lossOut: 0, kbpsIn: 0, kbpsOut: 0,
      availableOut: null, bytesReceived: 0, bytesSent: 0, packetsLost: 0, packetsReceived: 0,
      received: {}, state: pc.connectionState,
    };
    let remoteLossSum = 0;
    let remoteLossCount = 0;
    report.forEach((s) => {
      if (s.type === "candidate-pair" && (s.nominated || s.selected) && s.state === "succeeded") {
        if (s.currentRoundTripTime !== undefined) out.rtt = Math.round(s.currentRoundTripTime * 1000);
        if (s.availableOutgoingBitrate !== undefined) out.availableOut = Math.round(s.availableOutgoingBitrate / 1000);
        out.bytesReceived = Math.max(out.bytesReceived, s.bytesReceived || 0);
        out.bytesSent = Math.max(out.bytesSent, s.bytesSent || 0);
      } else if (s.type === "inbound-rtp") {
        out.packetsLost += s.packetsLost || 0;
        out.packetsReceived += s.packetsReceived || 0;
        const source = byTrack[s.trackIdentifier];
        if (source) {
          out.received[source] = {
            framesDecoded: s.framesDecoded || 0,
            width: s.frameWidth || 0,
            height: s.frameHeight || 0,
            fps: s.framesPerSecond || 0,
            bytes: s.bytesReceived || 0,
          };
        }
      } else if (s.type === "remote-inbound-rtp") {
        if (s.fractionLost !== undefined) {
          remoteLossSum += s.fractionLost;
          remoteLossCount += 1;
        }
        if (out.rtt === null && s.roundTripTime !== undefined) out.rtt = Math.round(s.roundTripTime * 1000);
      }
    });
    out.lossOut = remoteLossCount ? Math.round((remoteLossSum / remoteLossCount) * 1000) / 10 : 0;
    const prev = this.prevStats;
    if (prev) {
      const seconds = (out.at - prev.at) / 1000 || 1;
      out.kbpsIn = Math.round(((out.bytesReceived - prev.bytesReceived) * 8) / 1000 / seconds);
      out.kbpsOut = Math.round(((out.bytesSent - prev.bytesSent) * 8) / 1000 / seconds);
      const lost = out.packetsLost - prev.packetsLost;
      const got = out.packetsReceived - prev.packetsReceived;
      out.lossIn = lost + got > 0 ? Math.round((Math.max(0, lost) / (lost + got)) * 1000) / 10 : 0;
    }
    this.prevStats = out;
    return out;
  }

  close() {
    this.closed = true;
    clearInterval(this.watchTimer);
    if (this.pc) this.pc.close();
    this.pc = null;
    this.#setState("closed");
  }
}

/** "good" | "fair" | "poor" | "bad" from a stats sample. */
export function qualityLevel(sample) {
  const rtt = sample.rtt ?? 0;
  const loss = Math.max(sample.lossIn || 0, sample.lossOut || 0);
  if (rtt > 450 || loss > 15) return "bad";
  if (rtt > 300 || loss > 6) return "poor";
  if (rtt > 150 || loss > 2) return "fair";
  return "good";
}

/**
 * The weak-link ladder's decision: step down after three bad samples in a row (loss or
 * round trip, or a send estimate too small for what is being sent), step up after fifteen
 * good ones, one step at a time and never twice within five seconds.
 */
export class Ladder {
  constructor({ maxStep = 3, now = () => performance.now() } = {}) {
    this.step = 0;
    this.maxStep = maxStep;
    this.bad = 0;
    this.good = 0;
    this.now = now;
    this.changedAt = -Infinity;
  }

  /** Feed one sample; returns the new step when it changes, else null. */
  update(sample) {
    const level = qualityLevel(sample);
    // kbit/s below which the current step cannot be carried at all.
    const floor = [100, 60, 40, 0][this.step];
    const starved = sample.availableOut !== null && sample.availableOut !== undefined && sample.availableOut < floor;
    if (level === "bad" || level === "poor" || starved) {
      this.bad += 1;
      this.good = 0;
    } else if (level === "good") {
      this.good += 1;
      this.bad = 0;
    } else {
      this.bad = 0;
      this.good = 0;
    }
    if (this.now() - this.changedAt < 5000) return null;
    if (this.bad >= 3 && this.step < this.maxStep) {
      return this.#move(this.step + 1);
    }
    if (this.good >= 15 && this.step > 0) {
      return this.#move(this.step - 1);
    }
    return null;
  }

  #move(step) {
    this.step = step;
    this.bad = 0;
    this.good = 0;
    this.changedAt = this.now();
    return step;
  }
}
