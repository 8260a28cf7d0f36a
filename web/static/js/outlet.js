// The outlet page: pre-call check → item and applicant → queue → video call → rating.

import { $, $$, el, explain, pageConfig, show, translator } from "./dom.js";
import { Signal } from "./socket.js";
import { EV } from "./protocol.js";
import { Peer, Ladder, qualityLevel } from "./peer.js";
import { nextCamera, openCameraAndMic, openScreen } from "./devices.js";
import { PreCallCheck } from "./precheck.js";
import { RatingForm } from "./rating.js";
import { isValidIdNumber, isValidPhone } from "./idcard.js";
import { ItemPicker } from "./items.js";
import { Chat } from "./chat.js";
import { reportConnected } from "./report.js";

const config = pageConfig();
const t = translator(config.messages || {});

const state = {
  stage: "check",
  media: null, // camera + microphone stream
  screen: null, // screen stream while sharing
  session: null, // {id, state, item_name}
  peer: null,
  ladder: new Ladder(),
  muted: false,
  lastEnded: null,
  versions: new Map(),
  noteTimer: null,
  iceServers: [], // from call:state (connecting), the accept ack or session:resume: the first peer connection needs them
};

/** Keep the ICE servers a server body carries (docs/protocol.md §8). */
function noteIceServers(body) {
  if (body && Array.isArray(body.ice_servers)) state.iceServers = body.ice_servers;
}

// ---- stages -------------------------------------------------------------------------

function setStage(stage) {
  if (state.stage !== stage) banner("");
  state.stage = stage;
  for (const section of $$(".stage")) show(section, section.dataset.stage === stage);
  for (const li of $$("#steps li")) {
    li.classList.toggle("current", li.dataset.step === stage);
  }
  document.body.dataset.stage = stage;
}

function banner(text, kind = "error") {
  const node = $("#banner");
  node.textContent = text || "";
  node.dataset.kind = kind;
  show(node, Boolean(text));
}

// ---- connection ---------------------------------------------------------------------

const signal = new Signal({ onConnect: resync });
signal.addEventListener("state", (event) => {
  const { state: s } = event.detail;
  const node = $("#conn-status");
  node.dataset.state = s;
  node.textContent = s === "connected" ? t("connected") : t("disconnected");
});

/** After every (re)connect: ask the server where our call stands and catch up. */
async function resync() {
  let status;
  try {
    status = await signal.request(EV.SESSION_RESUME, {});
  } catch (err) {
    banner(explain(t, err));
    return;
  }
  noteIceServers(status);
  if (!status.call) {
    if (state.session && ["waiting", "call"].includes(state.stage)) endLocally({ reason: "failed" });
    return;
  }
  onCallState(status.call);
  if (status.position) showPosition(status.position);
  // The media connection may have died with the network: make sure it comes back.
  if (state.peer && state.peer.state !== "connected") state.peer.restart("socket reconnected");
}

function onCallState(call) {
  if (!call) return;
  // Events about one call may come from different nodes: drop one older than what we saw.
  if (call.version !== undefined) {
    if ((state.versions.get(call.id) ?? -1) > call.version) return;
    state.versions.set(call.id, call.version);
  }
  // Late news of the call that just ended (its rating may already be in): nothing to do.
  if (call.state === "ended" && (!state.session || state.session.id !== call.id)) return;
  if (state.session && call.id !== state.session.id) {
    if (call.state === "ended") return; // an older call's late news
  }
  if (!state.session || state.session.id !== call.id) {
    state.session = { id: call.id, item_name: call.item_name };
  }
  state.session.state = call.state;
  state.session.call = call;
  document.body.dataset.call = call.state;
  $("#wait-item").textContent = call.item_name || "";
  show($("#ring-box"), false);
  show($("#wait-title"), true);
  if ((call.state === "queued" || call.state === "offered") && state.peer) {
    // The agent dropped out for good: the call is back at the front of the queue.
    state.peer.close();
    state.peer = null;
    state.entering = null;
    $("#remote-video").srcObject = null;
    setStage("waiting");
    banner(t("requeued"), "info");
  }
  if (call.state === "queued") {
    if (state.stage !== "waiting") setStage("waiting");
    show($("#call-cancel"), true);
  } else if (call.state === "offered") {
    setStage("waiting");
    if (call.direction === "outbound") {
      // A county agent calls this outlet back: it rings here.
      $("#ring-text").textContent = [call.department_name, call.agent && call.agent.name, call.item_name].filter(Boolean).join(" · ");
      show($("#ring-box"), true);
      show($("#wait-title"), false);
      show($("#call-cancel"), false);
      $("#wait-position").textContent = "";
      $("#wait-eta").textContent = "";
    } else {
      $("#wait-position").textContent = t("ringing");
      $("#wait-eta").textContent = "";
    }
  } else if (call.state === "connecting" || call.state === "in_call") {
    banner("");
    const overlay = $("#call-overlay");
    if (state.stage === "call" && call.agent_present === false) {
      overlay.textContent = t("remote_lost");
      show(overlay, true);
    }
    enterCall(call);
  } else if (call.state === "ended") {
    endLocally({ reason: call.end_reason });
  }
}

// ---- pre-call check -----------------------------------------------------------------

const precheck = new PreCallCheck({ t, onMedia: (stream) => { state.media = stream; } });

// ---- form ---------------------------------------------------------------------------

const picker = new ItemPicker({
  input: $("#item-search"),
  list: $("#item-list"),
  chosen: $("#item-chosen"),
  emptyText: t("items_none"),
});

function validateId() {
  const value = $("#applicant-id").value.trim().toUpperCase();
  const msg = $("#applicant-id-msg");
  if (!value) {
    msg.textContent = "";
    msg.dataset.kind = "";
    return true;
  }
  const ok = isValidIdNumber(value);
  msg.textContent = ok ? t("id_ok") : t("id_invalid");
  msg.dataset.kind = ok ? "ok" : "error";
  return ok;
}

function validatePhone() {
  const value = $("#applicant-phone").value.trim();
  const msg = $("#applicant-phone-msg");
  const ok = !value || isValidPhone(value);
  msg.textContent = ok ? "" : t("phone_invalid");
  msg.dataset.kind = ok ? "" : "error";
  return ok;
}

function formError(text) {
  const node = $("#form-error");
  node.textContent = text || "";
  show(node, Boolean(text));
}

function collectForm() {
  const item = picker.selected;
  if (!item) return { error: t("pick_item") };
  const name = $("#applicant-name").value.trim();
  if (!name) return { error: t("need_name") };
  if (!validateId()) return { error: t("id_invalid") };
  if (!validatePhone()) return { error: t("phone_invalid") };
  if (!$("#consent-accept").checked) return { error: t("need_consent") };
  return {
    payload: {
      item_id: item.id,
      applicant: {
        name,
        id_number: $("#applicant-id").value.trim().toUpperCase(),
        phone: $("#applicant-phone").value.trim(),
      },
      priority: $("#applicant-priority").checked,
    },
  };
}

async function startCall(event) {
  event.preventDefault();
  const { error, payload } = collectForm();
  formError(error);
  if (error) return;
  const button = $("#call-start");
  button.disabled = true;
  try {
    const result = await signal.request(EV.CALL_START, payload);
    state.session = null;
    onCallState(result.call);
    show($("#callback-box"), false);
    if (result.position) showPosition(result.position);
  } catch (err) {
    if (err.code === "desk_closed") offerCallback(err);
    else formError(explain(t, err));
  } finally {
    button.disabled = false;
  }
}

function showPosition(info) {
  if (!info || (state.session && info.call_id && info.call_id !== state.session.id)) return;
  if (!info.position) return;
  const ahead = Math.max(0, info.position - 1);
  $("#wait-position").textContent = ahead === 0 ? t("queue_first") : t("queue_position", { ahead });
  const eta = info.estimated_wait_seconds;
  $("#wait-eta").textContent = eta === undefined || eta === null ? "" : eta < 60 ? t("queue_wait_short") : t("queue_wait", { minutes: Math.round(eta / 60) });
  // Nobody of the desk online: say so, and offer a callback while still waiting.
  if (info.agents_online === 0) {
    $("#callback-reason").textContent = t("nobody");
    show($("#callback-box"), true);
    show($("#callback-back"), false);
  } else if (state.stage === "waiting" && state.session && state.session.state === "queued") {
    show($("#callback-box"), false);
  }
}

function offerCallback(err) {
  setStage("waiting");
  show($("#call-cancel"), false);
  $("#wait-item").textContent = picker.selected ? picker.selected.name : "";
  $("#wait-position").textContent = "";
  $("#wait-eta").textContent = "";
  let reason = err.code === "desk_closed" ? t("closed_hours") : t("nobody");
  const opens = err.details && err.details.opens_at;
  if (opens) reason += " " + t("opens_at", { when: new Date(opens).toLocaleString() });
  $("#callback-reason").textContent = reason;
  show($("#callback-back"), true);
  show($("#callback-box"), true);
}

async function sendCallback() {
  const { error, payload } = collectForm();
  if (error) {
    $("#callback-reason").textContent = error;
    return;
  }
  try {
    await signal.request(EV.CALLBACK_CREATE, {
      item_id: payload.item_id,
      applicant: payload.applicant,
      note: $("#callback-when").value.trim(),
    });
    // Waiting on and leaving a callback would be two places in two lines: leave the queue.
    if (state.session && state.session.state === "queued") {
      await signal.request(EV.CALL_CANCEL, { call_id: state.session.id }).catch(() => {});
      state.session = null;
    }
    show($("#callback-box"), false);
    show($("#call-cancel"), false);
    $("#wait-position").textContent = t("callback_sent");
    $("#wait-eta").textContent = "";
    setTimeout(() => resetForNext(), 4000);
  } catch (err) {
    $("#callback-reason").textContent = explain(t, err);
  }
}

async function cancelCall() {
  if (!state.session) return setStage("form");
  const id = state.session.id;
  state.session = null;
  try {
    await signal.request(EV.CALL_CANCEL, { call_id: id });
  } catch (err) {
    banner(explain(t, err));
  }
  setStage("form");
}

async function answerRing(accept) {
  if (!state.session) return;
  show($("#ring-box"), false);
  try {
    const result = await signal.request(accept ? EV.CALL_ACCEPT : EV.CALL_DECLINE, { call_id: state.session.id });
    noteIceServers(result);
    onCallState(result.call);
  } catch (err) {
    banner(explain(t, err));
  }
}

// ---- in call ------------------------------------------------------------------------

async function enterCall(call) {
  if (state.stage !== "call") setStage("call");
  state.session.answered = true;
  // call:state and the accept ack may both bring us here; the first one builds the media.
  if (state.peer || state.entering === call.id) return;
  state.entering = call.id;
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
    sessionId: state.session.id,
    iceServers: state.iceServers,
    sources: {
      camera: state.media.getVideoTracks()[0] || null,
      microphone: state.media.getAudioTracks()[0] || null,
      screen: state.screen ? state.screen.getVideoTracks()[0] : null,
    },
    receive: ["camera", "microphone"],
  });
  state.peer = peer;
  peer.addEventListener("track", (event) => {
    const { source, track } = event.detail;
    if (source === "camera") $("#remote-video").srcObject = new MediaStream([track]);
    if (source === "microphone") $("#remote-audio").srcObject = new MediaStream([track]);
  });
  peer.addEventListener("state", (event) => {
    const s = event.detail.state;
    const overlay = $("#call-overlay");
    if (s === "reconnecting") {
      overlay.textContent = t("reconnecting");
      show(overlay, true);
      document.body.dataset.media = "reconnecting";
    } else if (s === "connected") {
      show(overlay, false);
      document.body.dataset.media = "connected";
      const session = state.session;
      if (session && session.state === "connecting") {
        reportConnected(signal, session.id, () => state.session === session && session.state === "connecting")
          .then((call) => call && onCallState(call));
      }
    } else if (s === "failed") {
      overlay.textContent = t("media_failed");
      show(overlay, true);
    }
  });
  peer.addEventListener("stats", (event) => onStats(event.detail));
  try {
    await peer.start();
  } catch (err) {
    banner(t("media_failed") + " " + err.message);
    peer.restart("start failed");
  }
}

function onStats(sample) {
  const level = qualityLevel(sample);
  const node = $("#quality");
  node.dataset.level = level;
  node.textContent = t(`quality_${level}`) + (sample.rtt !== null ? ` · ${sample.rtt} ms` : "");
  const step = state.ladder.update(sample);
  if (step !== null) setLadderStep(step, sample);
  if (state.session) {
    signal.send(EV.LINK_REPORT, {
      call_id: state.session.id,
      level,
      step: state.ladder.step,
      rtt_ms: sample.rtt,
      loss_in: sample.lossIn,
      loss_out: sample.lossOut,
      kbps_in: sample.kbpsIn,
      kbps_out: sample.kbpsOut,
    });
  }
}

async function setLadderStep(step, sample) {
  if (!state.peer) return;
  const previous = state.peer.step;
  await state.peer.applyStep(step);
  const note = $("#ladder-note");
  note.textContent = step < previous && step === 0 ? t("ladder_up") : t(`ladder_${step}`);
  note.dataset.step = String(step);
  show(note, true);
  clearTimeout(state.noteTimer);
  if (step === 0) state.noteTimer = setTimeout(() => show(note, false), 8000);
  document.body.dataset.ladder = String(step);
}

async function toggleShare() {
  const button = $("#btn-share");
  if (state.screen) {
    state.screen.getTracks().forEach((track) => track.stop());
    state.screen = null;
    if (state.peer) await state.peer.replaceTrack("screen", null);
    button.textContent = t("share_start");
    button.setAttribute("aria-pressed", "false");
    show($("#local-screen"), false);
    return;
  }
  try {
    state.screen = await openScreen();
  } catch (err) {
    banner(t("check_screen_fail"));
    return;
  }
  const track = state.screen.getVideoTracks()[0];
  track.addEventListener("ended", () => {
    if (state.screen) toggleShare();
  });
  $("#local-screen").srcObject = state.screen;
  show($("#local-screen"), true);
  if (state.peer) await state.peer.replaceTrack("screen", track);
  button.textContent = t("share_stop");
  button.setAttribute("aria-pressed", "true");
}

async function switchCamera() {
  const current = state.media && state.media.getVideoTracks()[0];
  const next = await nextCamera(current);
  if (!next) {
    banner(t("camera_single"), "info");
    setTimeout(() => banner(""), 3000);
    return;
  }
  const stream = await openCameraAndMic({ deviceId: next.deviceId, audio: false });
  const track = stream.getVideoTracks()[0];
  if (current) {
    state.media.removeTrack(current);
    current.stop();
  }
  state.media.addTrack(track);
  $("#local-video").srcObject = state.media;
  if (state.peer) await state.peer.replaceTrack("camera", track);
  banner(t("camera_switched"), "info");
  setTimeout(() => banner(""), 3000);
}

function toggleMute() {
  state.muted = !state.muted;
  for (const track of state.media ? state.media.getAudioTracks() : []) track.enabled = !state.muted;
  const button = $("#btn-mute");
  button.textContent = state.muted ? t("unmute") : t("mute");
  button.setAttribute("aria-pressed", String(state.muted));
}

function endLocally({ reason } = {}) {
  state.entering = null;
  if (state.peer) state.peer.close();
  state.peer = null;
  if (state.screen) state.screen.getTracks().forEach((track) => track.stop());
  state.screen = null;
  state.ladder = new Ladder();
  const ended = state.session;
  state.lastEnded = ended;
  state.session = null;
  const wasInCall = Boolean(ended && (ended.answered || (ended.call && ended.call.answered_at)));
  $("#ended-text").textContent = t("call_ended") + (reason ? " — " + t(`ended_reason_${reason}`) : "");
  if (wasInCall || reason === "completed") {
    setStage("rating");
    rating.open(ended.id);
  } else if (reason === "cancelled" || !ended) {
    setStage("form");
  } else {
    // Never connected (abandoned, no agent): offer a callback instead of a rating.
    offerCallback({ code: reason === "abandoned" || reason === "no_agent" ? "no_agent" : reason });
    $("#callback-reason").textContent = t(`ended_reason_${reason}`);
  }
}

// ---- rating -------------------------------------------------------------------------

const rating = new RatingForm({ t, csrfToken: config.csrf_token });

function resetForNext() {
  rating.reset();
  for (const id of ["#applicant-name", "#applicant-id", "#applicant-phone", "#callback-when"]) $(id).value = "";
  $("#applicant-priority").checked = false;
  $("#consent-accept").checked = false;
  $("#applicant-id-msg").textContent = "";
  picker.clear();
  $("#chat-log").replaceChildren();
  $("#decisions").replaceChildren();
  formError("");
  setStage("form");
}

// ---- server events ------------------------------------------------------------------

const chat = new Chat({ signal, log: $("#chat-log"), form: $("#chat-form"), input: $("#chat-input"), t, sessionId: () => state.session && state.session.id });

signal.on(EV.QUEUE_POSITION, (info) => {
  if (state.session && info.call_id === state.session.id && state.stage === "waiting") showPosition(info);
});
signal.on(EV.CALL_STATE, (body) => {
  noteIceServers(body);
  onCallState(body.call);
});
signal.on(EV.MEDIA_EVENT, (event) => {
  if (!state.session || event.call_id !== state.session.id) return;
  const overlay = $("#call-overlay");
  if (event.data && event.data.participant === "agent") {
    if (event.kind === "participant_failed") {
      overlay.textContent = t("remote_lost");
      show(overlay, true);
    } else if (event.kind === "participant_connected" || event.kind === "participant_media_resumed") {
      if (!state.peer || state.peer.state === "connected") show(overlay, false);
    }
  }
});
signal.on(EV.CHAT_MESSAGE, (message) => chat.receive(message));
signal.on(EV.DECISION, (decision) => {
  $("#decisions").append(el("li", { text: decision.text || decision.label || decision.kind }));
});
signal.on(EV.LINK_STATUS, (status) => {
  if (!status || status.from === "outlet") return;
  const note = $("#ladder-note");
  if (status.step) {
    note.textContent = t(`remote_ladder_${status.step}`);
    show(note, true);
  }
});

// ---- wiring -------------------------------------------------------------------------

$("#check-continue").addEventListener("click", () => {
  precheck.stop();
  setStage("form");
  $("#item-search").focus();
});
$("#applicant-id").addEventListener("input", validateId);
$("#applicant-phone").addEventListener("input", validatePhone);
$("#call-form").addEventListener("submit", startCall);
$("#call-cancel").addEventListener("click", cancelCall);
$("#callback-send").addEventListener("click", sendCallback);
$("#callback-back").addEventListener("click", () => setStage("form"));
$("#ring-accept").addEventListener("click", () => answerRing(true));
$("#ring-decline").addEventListener("click", () => answerRing(false));
$("#btn-share").addEventListener("click", toggleShare);
$("#btn-camera").addEventListener("click", switchCamera);
$("#btn-mute").addEventListener("click", toggleMute);
$("#next-applicant").addEventListener("click", resetForNext);
window.addEventListener("online", () => {
  if (state.peer && state.peer.state !== "connected") state.peer.restart("online");
});

setStage("check");
picker.load().catch((err) => banner(explain(t, err)));
precheck.camera();
precheck.network();
