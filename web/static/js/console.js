// The agent console: presence, the live queue and callbacks, the new-call alert, the call view.

import { $, $$, el, explain, beep, formatDuration, pageConfig, show, translator } from "./dom.js";
import { Signal } from "./socket.js";
import { EV } from "./protocol.js";
import { Peer, qualityLevel } from "./peer.js";
import { openCameraAndMic } from "./devices.js";
import { Chat } from "./chat.js";
import { reportConnected } from "./report.js";

const config = pageConfig();
const t = translator(config.messages || {});
const HEARTBEAT_MS = 15000;

const state = {
  presence: "offline",
  queues: new Map(), // department_id -> [entry with received_at]
  callbacks: new Map(), // department_id -> [callback]
  seen: new Set(), // call ids already announced
  call: null, // the call I hold (offered to me, connecting, in call)
  peer: null,
  media: null,
  audio: null,
  muted: false,
  outletLink: null,
  versions: new Map(),
  iceServers: [], // from the accept ack, call:state (connecting) or session:resume: the first peer connection needs them
};

/** Keep the ICE servers a server body carries (docs/protocol.md §8). */
function noteIceServers(body) {
  if (body && Array.isArray(body.ice_servers)) state.iceServers = body.ice_servers;
}

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
    const status = await signal.request(EV.SESSION_RESUME, {});
    noteIceServers(status);
    if (status.presence) setPresence(status.presence.state);
    state.queues.clear();
    for (const queue of status.queues || []) setQueue(queue.department_id, queue.calls, { announce: false });
    state.callbacks.clear();
    for (const cb of status.callbacks || []) {
      const list = state.callbacks.get(cb.department_id) || [];
      list.push(cb);
      state.callbacks.set(cb.department_id, list);
    }
    renderQueue();
    renderCallbacks();
    if (status.call) onCallState(status.call);
    else if (state.call) endLocally();
    if (state.peer && state.peer.state !== "connected") state.peer.restart("socket reconnected");
  } catch (err) {
    banner(explain(t, err));
  }
}

// ---- presence -----------------------------------------------------------------------

function setPresence(presence) {
  state.presence = presence;
  const node = $("#presence-state");
  node.dataset.state = presence;
  node.textContent = t(`presence_${presence}`);
  for (const button of $$(".presence-btn")) button.setAttribute("aria-pressed", String(button.dataset.presence === presence));
  updateTakeNext();
}

async function choosePresence(event) {
  const button = event.target.closest(".presence-btn");
  if (!button) return;
  // A user gesture: unlock audio now so that the alert can sound later.
  if (!state.audio) state.audio = new AudioContext();
  state.audio.resume().catch(() => {});
  try {
    const result = await signal.request(EV.PRESENCE_SET, { state: button.dataset.presence });
    setPresence(result.presence.state);
  } catch (err) {
    banner(explain(t, err));
  }
}

async function heartbeat() {
  if (!signal.connected) return;
  try {
    const result = await signal.request(EV.PRESENCE_HEARTBEAT, {});
    if (result.presence) setPresence(result.presence.state);
  } catch {
    /* the next beat or the reconnect resynchronises */
  }
}

// ---- queue --------------------------------------------------------------------------

function allWaiting() {
  const all = [];
  for (const list of state.queues.values()) all.push(...list);
  // The server's order: front, then priority, then longest wait.
  all.sort((a, b) => (b.front - a.front) || ((b.priority === "priority") - (a.priority === "priority")) || (waited(b) - waited(a)));
  return all;
}

function waited(entry) {
  return entry.wait_seconds + (Date.now() - entry.received_at) / 1000;
}

function setQueue(departmentId, calls, { announce = true, total = null } = {}) {
  const now = Date.now();
  state.totals = state.totals || new Map();
  state.totals.set(departmentId, total ?? (calls || []).length);
  const fresh = [];
  state.queues.set(departmentId, (calls || []).map((entry) => {
    if (!state.seen.has(entry.id)) {
      state.seen.add(entry.id);
      fresh.push(entry);
    }
    return { ...entry, received_at: now };
  }));
  if (announce && fresh.length && state.presence === "available" && !state.call) alertNewCall(fresh[0]);
}

function updateTakeNext() {
  $("#take-next").disabled = state.presence !== "available" || !allWaiting().length || Boolean(state.call);
}

function renderQueue() {
  const list = allWaiting();
  const rows = list.map((entry) => {
    const priority = entry.priority === "priority";
    return el("tr", {
      cls: priority ? "priority" : "",
      attrs: { "data-call": entry.id },
      children: [
        el("td", { cls: "waited", text: formatDuration(t, waited(entry)) }),
        el("td", { text: entry.outlet_name || "" }),
        el("td", { text: entry.island || "" }),
        el("td", { text: entry.item_name || "" }),
        el("td", { children: [priority ? el("span", { cls: "prio-tag", text: t("priority_high") }) : el("span", { text: t("priority_normal") })] }),
        el("td", { children: [el("button", { cls: "btn-secondary take-this", attrs: { type: "button", "data-call": entry.id }, text: t("take") })] }),
      ],
    });
  });
  $("#queue-rows").replaceChildren(...rows);
  let total = 0;
  for (const n of (state.totals || new Map()).values()) total += n;
  $("#queue-count").textContent = String(Math.max(total, list.length));
  show($("#queue-empty"), !list.length);
  updateTakeNext();
  if (!list.length) stopAlert();
}

function tickWaits() {
  const list = allWaiting();
  $$("#queue-rows tr").forEach((row, i) => {
    if (list[i]) row.querySelector(".waited").textContent = formatDuration(t, waited(list[i]));
  });
}

function renderCallbacks() {
  const list = [];
  for (const rows of state.callbacks.values()) list.push(...rows);
  const rows = list.map((cb) =>
    el("tr", {
      children: [
        el("td", { text: cb.created_at ? new Date(cb.created_at).toLocaleTimeString() : "" }),
        el("td", { text: cb.outlet_name || (config.outlets[String(cb.outlet_id)] || {}).name || "" }),
        el("td", { text: cb.item_name || config.items[String(cb.service_item_id)] || "" }),
        el("td", { text: (cb.applicant && cb.applicant.name) || "" }),
        el("td", { text: cb.note || (cb.preferred_time ? new Date(cb.preferred_time).toLocaleString() : "") }),
        el("td", { children: [cb.status === "calling"
          ? el("span", { text: t("presence_busy") })
          : el("button", { cls: "btn-secondary call-back", attrs: { type: "button", "data-callback": cb.id }, text: t("call_back") })] }),
      ],
    }),
  );
  $("#callback-rows").replaceChildren(...rows);
  $("#callback-count").textContent = String(list.length);
  show($("#callbacks-empty"), !list.length);
}

/** Claim a call (the next one, or `callId`) and pick it up: pressing "take" is the answer. */
async function take(callId) {
  stopAlert();
  try {
    const taken = await signal.request(EV.QUEUE_TAKE, callId ? { call_id: callId } : {});
    const accepted = await signal.request(EV.CALL_ACCEPT, { call_id: taken.call.id });
    noteIceServers(accepted);
    onCallState(accepted.call);
  } catch (err) {
    banner(explain(t, err));
  }
}

async function callBack(callbackId) {
  try {
    const result = await signal.request(EV.CALLBACK_CALL, { callback_id: callbackId });
    onCallState(result.call);
  } catch (err) {
    banner(explain(t, err));
  }
}

// ---- the alert: a new call waits (audible and visible) ----------------------------------

let alertTimer = null;
const baseTitle = document.title;

function alertNewCall(entry) {
  state.alerted = entry;
  $("#incoming-text").textContent = [entry.outlet_name, entry.island, entry.item_name].filter(Boolean).join(" · ");
  show($("#incoming"), true);
  const play = () => beep(state.audio).then((ctx) => { state.audio = ctx; }).catch(() => {});
  play();
  clearInterval(alertTimer);
  alertTimer = setInterval(play, 3000);
  document.title = "🔔 " + t("incoming") + " · " + baseTitle;
  document.body.dataset.alert = "on";
}

function stopAlert() {
  clearInterval(alertTimer);
  alertTimer = null;
  show($("#incoming"), false);
  document.title = baseTitle;
  document.body.dataset.alert = "off";
}

// ---- call ---------------------------------------------------------------------------

function onCallState(call) {
  if (!call) return;
  // Events about one call may come from different nodes: drop one older than what we saw.
  if (call.version !== undefined) {
    if ((state.versions.get(call.id) ?? -1) > call.version) return;
    state.versions.set(call.id, call.version);
  }
  if (call.state === "ended" || (call.agent && call.agent.id !== config.user.id)) {
    if (state.call && state.call.id === call.id) endLocally(call.end_reason);
    return;
  }
  if (call.state === "queued") {
    // Declined or ring timeout: it went back to the queue.
    if (state.call && state.call.id === call.id) endLocally();
    return;
  }
  state.call = { ...(state.call && state.call.id === call.id ? state.call : {}), ...call };
  updateTakeNext();
  if (call.state === "offered") {
    if (call.direction === "outbound") banner(t("outlet_ringing"), "info");
    return;
  }
  banner("");
  if (call.state === "connecting" || call.state === "in_call") {
    const overlay = $("#call-overlay");
    overlay.textContent = call.outlet_present === false ? t("remote_lost") : "";
    show(overlay, call.outlet_present === false);
    if (!state.peer) enterCall(state.call);
  }
}

async function enterCall(call) {
  // call:state and the accept ack both bring us here; the first one builds the media.
  if (state.entering === call.id) return;
  state.entering = call.id;
  stopAlert();
  setPresence("busy"); // the server made us busy; it tells supervisors, and our heartbeat confirms
  show($("#view-queue"), false);
  show($("#view-call"), true);
  document.body.dataset.stage = "call";
  $("#call-info").textContent = [call.outlet_name, call.island, call.item_name, call.applicant && call.applicant.name,
    call.applicant && call.applicant.id_masked].filter(Boolean).join(" · ");
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
    iceServers: state.iceServers,
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
    if (s === "reconnecting") {
      overlay.textContent = t("reconnecting");
      show(overlay, true);
    } else if (s === "connected") {
      show(overlay, false);
      const current = state.call;
      if (current && current.state === "connecting") {
        reportConnected(signal, current.id, () => state.call && state.call.id === current.id && state.call.state === "connecting")
          .then((updated) => updated && onCallState(updated));
      }
    }
  });
  peer.addEventListener("stats", (event) => {
    const sample = event.detail;
    // The screen m-line exists from the start; the outlet shares when its frames keep coming.
    const frames = sample.received.screen ? sample.received.screen.framesDecoded : 0;
    const sharing = frames > (state.screenFrames || 0);
    state.screenFrames = frames;
    show($("#screen-empty"), !sharing);
    document.body.dataset.screen = sharing ? "on" : "off";
    if (!state.outletLink) {
      showQuality(qualityLevel(sample), sample.rtt);
      showInferredStep(sample);
    }
  });
  try {
    await peer.start();
  } catch (err) {
    banner(t("media_failed") + " " + err.message);
    peer.restart("start failed");
  }
}

/**
 * Without the outlet's own report (link:status), tell the agent what the outlet's ladder
 * is doing from what arrives: a paused camera while sound still flows, or a small picture.
 */
function showInferredStep(sample) {
  const camera = sample.received.camera;
  const frames = camera ? camera.framesDecoded : 0;
  const moving = frames > (state.cameraFrames || 0);
  state.cameraFrames = frames;
  let step = 0;
  if (!moving && sample.kbpsIn > 0) step = 2;
  else if (camera && camera.width && camera.width <= 320) step = 1;
  state.inferred = state.inferred && state.inferred.step === step ? { step, count: state.inferred.count + 1 } : { step, count: 1 };
  if (state.inferred.count !== 3) return; // three samples in a row, then say it once
  const note = $("#ladder-note");
  note.textContent = step ? t(`remote_ladder_${step}`) : "";
  note.dataset.step = String(step);
  show(note, Boolean(step));
}

function showQuality(level, rtt) {
  const node = $("#quality");
  node.dataset.level = level;
  node.textContent = `${t(`quality_${level}`)}${rtt !== null && rtt !== undefined ? ` · ${rtt} ms` : ""}`;
}

function endLocally() {
  state.entering = null;
  if (state.peer) state.peer.close();
  state.peer = null;
  state.call = null;
  state.outletLink = null;
  state.screenFrames = 0;
  state.cameraFrames = 0;
  state.inferred = null;
  for (const id of ["#remote-camera", "#remote-screen", "#remote-audio"]) $(id).srcObject = null;
  $("#chat-log").replaceChildren();
  $("#snapshots").replaceChildren();
  show($("#ladder-note"), false);
  show($("#call-overlay"), false);
  show($("#view-call"), false);
  show($("#view-queue"), true);
  document.body.dataset.stage = "queue";
  updateTakeNext();
  heartbeat();
}

async function endCall() {
  if (!state.call) return;
  try {
    await signal.request(EV.CALL_END, { call_id: state.call.id });
  } catch (err) {
    banner(explain(t, err));
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
  const source = document.body.dataset.screen === "on" ? "screen" : "camera";
  try {
    const result = await signal.request(EV.SNAPSHOT_TAKE, { call_id: state.call.id, source }, { timeoutMs: 20000 });
    const img = el("img", { attrs: { alt: t("snapshot_taken"), src: result.url } });
    $("#snapshots").prepend(img);
  } catch (err) {
    banner(explain(t, err));
  }
}

// ---- server events ------------------------------------------------------------------

signal.on(EV.QUEUE_UPDATE, (update) => {
  setQueue(update.department_id, update.calls, { total: update.total });
  renderQueue();
});
signal.on(EV.CALLBACK_UPDATE, (update) => {
  state.callbacks.set(update.department_id, update.callbacks || []);
  renderCallbacks();
});
signal.on(EV.CALL_STATE, (body) => {
  noteIceServers(body);
  onCallState(body.call);
});
signal.on(EV.MEDIA_EVENT, (event) => {
  if (!state.call || event.call_id !== state.call.id || !event.data || event.data.participant !== "outlet") return;
  const overlay = $("#call-overlay");
  if (event.kind === "participant_failed") {
    overlay.textContent = t("remote_lost");
    show(overlay, true);
  } else if (event.kind === "participant_connected" || event.kind === "participant_media_resumed") {
    show(overlay, false);
  }
});
signal.on(EV.LINK_STATUS, (status) => {
  if (!state.call || status.from === "agent") return;
  state.outletLink = status;
  showQuality(status.level || "good", status.rtt_ms);
  $("#quality").dataset.source = "outlet"; // the outlet's own figures, not inferred from what arrives
  const note = $("#ladder-note");
  note.textContent = status.step ? t(`remote_ladder_${status.step}`) : "";
  show(note, Boolean(status.step));
});
const chat = new Chat({ signal, log: $("#chat-log"), form: $("#chat-form"), input: $("#chat-input"), t, sessionId: () => state.call && state.call.id, me: "agent" });
signal.on(EV.CHAT_MESSAGE, (message) => chat.receive(message));

$(".presence").addEventListener("click", choosePresence);
$("#take-next").addEventListener("click", () => take(null));
$("#queue-rows").addEventListener("click", (event) => {
  const button = event.target.closest(".take-this");
  if (button) take(button.dataset.call);
});
$("#callback-rows").addEventListener("click", (event) => {
  const button = event.target.closest(".call-back");
  if (button) callBack(Number(button.dataset.callback));
});
$("#incoming-accept").addEventListener("click", () => take(state.alerted ? state.alerted.id : null));
$("#incoming-decline").addEventListener("click", stopAlert);
$("#btn-end").addEventListener("click", endCall);
$("#btn-mute").addEventListener("click", toggleMute);
$("#btn-snapshot").addEventListener("click", snapshot);
setInterval(tickWaits, 1000);
setInterval(heartbeat, HEARTBEAT_MS);
document.body.dataset.stage = "queue";
