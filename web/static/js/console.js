// The agent console: presence, the live queue and callbacks, the ringing alert, the call view.

import { $, $$, el, beep, formatDuration, pageConfig, show, translator } from "./dom.js";
import { Signal } from "./socket.js";
import { EV } from "./protocol.js";
import { Peer, qualityLevel } from "./peer.js";
import { openCameraAndMic } from "./devices.js";
import { Chat } from "./chat.js";

const config = pageConfig();
const t = translator(config.messages || {});

const state = {
  presence: "offline",
  queue: [],
  callbacks: [],
  offered: null,
  call: null, // {id, ...} while in a call
  peer: null,
  media: null,
  audio: null,
  muted: false,
  serverOffset: 0,
};

function banner(text, kind = "error") {
  const node = $("#banner");
  node.textContent = text || "";
  node.dataset.kind = kind;
  show(node, Boolean(text));
}

const signal = new Signal({ onConnect: resync });
signal.addEventListener("state", (event) => {
  const node = $("#conn-status");
  node.dataset.state = event.detail.state;
  node.textContent = event.detail.state === "connected" ? t("connected") : t("disconnected");
});

async function resync() {
  try {
    const status = await signal.request(EV.SYNC, {});
    if (status.presence) setPresence(status.presence.state || status.presence);
    if (status.queue) renderQueue(status.queue);
    if (status.callbacks) renderCallbacks(status.callbacks);
    if (status.call) onCallState(status.call);
    else if (state.call) endLocally();
  } catch (err) {
    banner(t("error") + err.message);
  }
}

// ---- presence -----------------------------------------------------------------------

function setPresence(presence) {
  state.presence = presence;
  const node = $("#presence-state");
  node.dataset.state = presence;
  node.textContent = t(`presence_${presence}`);
  for (const button of $$(".presence-btn")) button.setAttribute("aria-pressed", String(button.dataset.presence === presence));
  $("#take-next").disabled = presence !== "available" || !state.queue.length;
}

async function choosePresence(event) {
  const button = event.target.closest(".presence-btn");
  if (!button) return;
  // A user gesture: unlock audio now so the ring can play later.
  if (!state.audio) state.audio = new AudioContext();
  state.audio.resume().catch(() => {});
  try {
    const result = await signal.request(EV.PRESENCE_SET, { state: button.dataset.presence });
    setPresence((result && (result.state || result.presence)) || button.dataset.presence);
  } catch (err) {
    banner(t("error") + err.message);
  }
}

// ---- queue --------------------------------------------------------------------------

function waitedSeconds(entry) {
  if (entry.waited_seconds !== undefined && entry.received_at) {
    return entry.waited_seconds + (Date.now() - entry.received_at) / 1000;
  }
  const queued = entry.queued_at;
  if (typeof queued === "number") return Date.now() / 1000 - queued;
  if (typeof queued === "string") return (Date.now() - Date.parse(queued)) / 1000;
  return 0;
}

function renderQueue(list) {
  const now = Date.now();
  state.queue = (list || []).map((entry) => ({ ...entry, received_at: now }));
  const rows = state.queue.map((entry) => {
    const priority = entry.priority === "priority";
    return el("tr", {
      cls: priority ? "priority" : "",
      attrs: { "data-session": entry.session_id || entry.id },
      children: [
        el("td", { cls: "waited", text: formatDuration(t, waitedSeconds(entry)) }),
        el("td", { text: entry.outlet_name || "" }),
        el("td", { text: entry.island || "" }),
        el("td", { text: entry.item_name || "" }),
        el("td", { children: [priority ? el("span", { cls: "prio-tag", text: t("priority_high") }) : el("span", { text: t("priority_normal") })] }),
        el("td", { children: [el("button", { cls: "btn-secondary take-this", attrs: { type: "button", "data-session": entry.session_id || entry.id }, text: t("take") })] }),
      ],
    });
  });
  $("#queue-rows").replaceChildren(...rows);
  $("#queue-count").textContent = String(state.queue.length);
  show($("#queue-empty"), !state.queue.length);
  $("#take-next").disabled = state.presence !== "available" || !state.queue.length;
}

function tickWaits() {
  const rows = $$("#queue-rows tr");
  rows.forEach((row, i) => {
    const entry = state.queue[i];
    if (entry) row.querySelector(".waited").textContent = formatDuration(t, waitedSeconds(entry));
  });
}

function renderCallbacks(list) {
  state.callbacks = list || [];
  const rows = state.callbacks.map((cb) =>
    el("tr", {
      children: [
        el("td", { text: cb.created_at ? new Date(cb.created_at).toLocaleTimeString() : "" }),
        el("td", { text: cb.outlet_name || "" }),
        el("td", { text: cb.item_name || "" }),
        el("td", { text: (cb.applicant && cb.applicant.name) || "" }),
        el("td", { text: cb.note || cb.preferred_time || "" }),
        el("td", { children: [el("button", { cls: "btn-secondary call-back", attrs: { type: "button", "data-callback": cb.id }, text: t("call_back") })] }),
      ],
    }),
  );
  $("#callback-rows").replaceChildren(...rows);
  $("#callback-count").textContent = String(state.callbacks.length);
  show($("#callbacks-empty"), !state.callbacks.length);
}

async function take(sessionId) {
  try {
    const result = await signal.request(EV.CALL_TAKE, sessionId ? { session_id: sessionId } : {});
    if (result && (result.call || result.state)) onCallState(result.call || result);
  } catch (err) {
    banner(t("error") + err.message);
  }
}

async function callBack(callbackId) {
  try {
    const result = await signal.request(EV.CALLBACK_CALL, { callback_id: callbackId });
    if (result && (result.call || result.state)) onCallState(result.call || result);
  } catch (err) {
    banner(t("error") + err.message);
  }
}

// ---- ringing ------------------------------------------------------------------------

let ringTimer = null;

function ring(call) {
  state.offered = call;
  $("#incoming-text").textContent = [call.outlet_name, call.island, call.item_name].filter(Boolean).join(" · ");
  show($("#incoming"), true);
  const play = () => beep(state.audio).then((ctx) => { state.audio = ctx; }).catch(() => {});
  play();
  clearInterval(ringTimer);
  ringTimer = setInterval(play, 2000);
  document.title = "🔔 " + t("incoming");
}

function stopRing() {
  clearInterval(ringTimer);
  ringTimer = null;
  show($("#incoming"), false);
  document.title = document.title.replace(/^🔔 .*/, t("presence_busy"));
}

async function acceptOffered() {
  const call = state.offered;
  if (!call) return;
  stopRing();
  try {
    const result = await signal.request(EV.CALL_ACCEPT, { session_id: call.session_id || call.id });
    onCallState((result && (result.call || (result.state && result))) || { ...call, state: "connecting" });
  } catch (err) {
    banner(t("error") + err.message);
  }
}

async function declineOffered() {
  const call = state.offered;
  stopRing();
  if (!call) return;
  try {
    await signal.request(EV.CALL_DECLINE, { session_id: call.session_id || call.id });
  } catch (err) {
    banner(t("error") + err.message);
  }
}

// ---- call ---------------------------------------------------------------------------

function onCallState(call) {
  const id = call.session_id || call.id;
  if (call.state === "offered" && (!call.agent_id || call.agent_id === config.user.id)) {
    if (call.direction === "outbound") {
      banner(t("ringing"), "info");
      return;
    }
    ring(call);
  } else if (call.state === "connecting" || call.state === "in_call") {
    stopRing();
    if (!state.call || state.call.id !== id) enterCall({ ...call, id });
  } else if (call.state === "ended") {
    stopRing();
    if (state.call && state.call.id === id) endLocally(call.end_reason || call.reason);
  }
}

async function enterCall(call) {
  state.call = call;
  show($("#view-queue"), false);
  show($("#view-call"), true);
  document.body.dataset.stage = "call";
  $("#call-info").textContent = [call.outlet_name, call.island, call.item_name, call.applicant && call.applicant.name].filter(Boolean).join(" · ");
  if (!state.media) {
    try {
      state.media = await openCameraAndMic();
    } catch {
      state.media = new MediaStream();
    }
  }
  $("#local-video").srcObject = state.media;
  const peer = new Peer({
    signal,
    sessionId: call.id,
    iceServers: call.ice_servers || [],
    sources: { camera: state.media.getVideoTracks()[0] || null, microphone: state.media.getAudioTracks()[0] || null },
    receive: ["camera", "screen", "microphone"],
  });
  state.peer = peer;
  peer.addEventListener("track", (event) => {
    const { source, track } = event.detail;
    const target = { camera: "#remote-camera", screen: "#remote-screen", microphone: "#remote-audio" }[source];
    $(target).srcObject = new MediaStream([track]);
  });
  peer.addEventListener("state", (event) => {
    const s = event.detail.state;
    document.body.dataset.media = s;
    const overlay = $("#call-overlay");
    overlay.textContent = s === "reconnecting" ? t("reconnecting") : "";
    show(overlay, s === "reconnecting");
  });
  peer.addEventListener("stats", (event) => {
    const sample = event.detail;
    const screen = sample.received.screen;
    show($("#screen-empty"), !(screen && screen.framesDecoded > 0 && screen.fps > 0));
    if (!state.outletLink) showQuality(qualityLevel(sample), sample.rtt);
  });
  try {
    await peer.start();
  } catch (err) {
    banner(t("media_failed") + " " + err.message);
    peer.restart("start failed");
  }
}

function showQuality(level, rtt) {
  const node = $("#quality");
  node.dataset.level = level;
  node.textContent = `${t(`quality_${level}`)}${rtt !== null && rtt !== undefined ? ` · ${rtt} ms` : ""}`;
}

function endLocally() {
  if (state.peer) state.peer.close();
  state.peer = null;
  state.call = null;
  state.outletLink = null;
  $("#chat-log").replaceChildren();
  $("#snapshots").replaceChildren();
  show($("#ladder-note"), false);
  show($("#view-call"), false);
  show($("#view-queue"), true);
  document.body.dataset.stage = "queue";
}

async function endCall() {
  if (!state.call) return;
  try {
    await signal.request(EV.CALL_END, { session_id: state.call.id });
  } catch (err) {
    banner(t("error") + err.message);
  }
  endLocally();
}

function toggleMute() {
  state.muted = !state.muted;
  for (const track of state.media ? state.media.getAudioTracks() : []) track.enabled = !state.muted;
  const button = $("#btn-mute");
  button.textContent = state.muted ? t("unmute") : t("mute");
  button.setAttribute("aria-pressed", String(state.muted));
}

async function snapshot() {
  if (!state.call) return;
  const source = $("#screen-empty").hidden ? "screen" : "camera";
  try {
    const result = await signal.request(EV.SNAPSHOT_TAKE, { session_id: state.call.id, source }, { timeoutMs: 20000 });
    const img = el("img", { attrs: { alt: t("snapshot_taken"), src: result.url } });
    $("#snapshots").prepend(img);
  } catch (err) {
    banner(t("error") + err.message);
  }
}

// ---- server events ------------------------------------------------------------------

signal.on(EV.QUEUE_UPDATE, (update) => renderQueue(Array.isArray(update) ? update : update.calls || update.queue));
signal.on(EV.CALLBACKS_UPDATE, (update) => renderCallbacks(Array.isArray(update) ? update : update.callbacks));
signal.on(EV.PRESENCE_UPDATE, (update) => {
  if (!update.user_id || update.user_id === config.user.id) setPresence(update.state);
});
signal.on(EV.CALL_OFFERED, (call) => onCallState({ ...call, state: call.state || "offered" }));
signal.on(EV.CALL_STATE, (call) => onCallState(call));
signal.on(EV.CALL_ENDED, (info) => onCallState({ ...info, state: "ended" }));
signal.on(EV.LINK_STATUS, (status) => {
  if (!state.call || status.from === "agent") return;
  state.outletLink = status;
  showQuality(status.level || "good", status.rtt_ms);
  const note = $("#ladder-note");
  if (status.step) {
    note.textContent = t(`remote_ladder_${status.step}`);
    show(note, true);
  } else {
    show(note, false);
  }
});
const chat = new Chat({ signal, log: $("#chat-log"), form: $("#chat-form"), input: $("#chat-input"), t, sessionId: () => state.call && state.call.id, me: "agent" });
signal.on(EV.CHAT_MESSAGE, (message) => chat.receive(message));

$(".presence").addEventListener("click", choosePresence);
$("#take-next").addEventListener("click", () => take(null));
$("#queue-rows").addEventListener("click", (event) => {
  const button = event.target.closest(".take-this");
  if (button) take(button.dataset.session);
});
$("#callback-rows").addEventListener("click", (event) => {
  const button = event.target.closest(".call-back");
  if (button) callBack(Number(button.dataset.callback));
});
$("#incoming-accept").addEventListener("click", acceptOffered);
$("#incoming-decline").addEventListener("click", declineOffered);
$("#btn-end").addEventListener("click", endCall);
$("#btn-mute").addEventListener("click", toggleMute);
$("#btn-snapshot").addEventListener("click", snapshot);
setInterval(tickWaits, 1000);
document.body.dataset.stage = "queue";
