// The supervisor wallboard: calls waiting, oldest wait, agents by state, calls in progress.
// Built from session:resume (agents and queues) and kept live by presence:update and
// queue:update. Calls in progress are the busy agents' calls, labelled with outlet and item
// from the call:state snapshots supervisors receive on every transition (a call that has
// not changed since the page loaded shows its agent and department only).

import { $, el, formatDuration, pageConfig, translator } from "./dom.js";
import { Signal } from "./socket.js";
import { EV } from "./protocol.js";

const config = pageConfig();
const t = translator(config.messages || {});
const board = { queues: new Map(), agents: new Map(), calls: new Map(), offset: 0 };

function nowServer() {
  return Date.now() / 1000 + board.offset;
}

function deptName(id) {
  return (config.departments && config.departments[String(id)]) || "";
}

function waitingCalls() {
  const all = [];
  for (const [deptId, queue] of board.queues) {
    for (const c of queue.calls) all.push({ ...c, department_id: deptId, waited: c.wait_seconds + (Date.now() - queue.received_at) / 1000 });
  }
  return all.sort((a, b) => b.waited - a.waited);
}

function render() {
  const waiting = waitingCalls();
  let total = 0;
  for (const queue of board.queues.values()) total += queue.total;
  $("#tile-waiting").textContent = String(Math.max(total, waiting.length));
  $("#tile-oldest").textContent = waiting.length ? formatDuration(t, waiting[0].waited) : "—";
  const agents = Array.from(board.agents.values()).sort((a, b) => a.name.localeCompare(b.name));
  const counts = { available: 0, busy: 0, away: 0, offline: 0 };
  for (const agent of agents) counts[agent.state] = (counts[agent.state] || 0) + 1;
  const busy = agents.filter((a) => a.state === "busy" && a.call_id);
  $("#tile-calls").textContent = String(busy.length);
  $("#tile-available").textContent = String(counts.available);
  $("#agent-states").replaceChildren(
    ...Object.entries(counts).map(([s, n]) => el("span", { cls: `state-${s}`, attrs: { "data-state": s }, text: `${t(`presence_${s}`)} ${n}` })),
  );
  $("#agent-rows").replaceChildren(
    ...agents.map((agent) =>
      el("tr", { attrs: { "data-agent": agent.user_id }, children: [
        el("td", { text: agent.name }),
        el("td", { children: [el("span", { cls: `state-${agent.state}`, text: t(`presence_${agent.state}`) })] }),
        el("td", { text: agent.since ? formatDuration(t, nowServer() - agent.since) : "" }),
      ] }),
    ),
  );
  $("#waiting-rows").replaceChildren(
    ...waiting.map((c) =>
      el("tr", { cls: c.priority === "priority" ? "priority" : "", attrs: { "data-call": c.id }, children: [
        el("td", { text: formatDuration(t, c.waited) }),
        el("td", { text: deptName(c.department_id) }),
        el("td", { text: [c.outlet_name, c.island].filter(Boolean).join(" · ") }),
        el("td", { text: c.item_name || "" }),
        el("td", { text: c.priority === "priority" ? t("priority_high") : t("priority_normal") }),
      ] }),
    ),
  );
  $("#call-rows").replaceChildren(
    ...busy.map((agent) =>
      el("tr", { attrs: { "data-call": agent.call_id }, children: [
        el("td", { text: agent.since ? formatDuration(t, nowServer() - agent.since) : "" }),
        el("td", { text: callOf(agent).department_name || (agent.department_ids || []).map(deptName).filter(Boolean).join("、") }),
        el("td", { text: [callOf(agent).outlet_name, callOf(agent).island].filter(Boolean).join(" · ") }),
        el("td", { text: callOf(agent).item_name || "" }),
        el("td", { text: agent.name }),
        el("td", { text: t("presence_busy") }),
      ] }),
    ),
  );
  $("#calls-empty").hidden = busy.length > 0;
}

function callOf(agent) {
  return board.calls.get(agent.call_id) || {};
}

function setQueue(departmentId, calls, total) {
  board.queues.set(departmentId, { calls: calls || [], total: total ?? (calls || []).length, received_at: Date.now() });
}

const signal = new Signal({
  onConnect: async (s) => {
    const status = await s.request(EV.SESSION_RESUME, {});
    if (status.server_time) board.offset = status.server_time - Date.now() / 1000;
    board.agents.clear();
    for (const agent of status.agents || []) board.agents.set(agent.user_id, agent);
    board.queues.clear();
    for (const queue of status.queues || []) setQueue(queue.department_id, queue.calls);
    render();
  },
});
signal.addEventListener("state", (event) => {
  const node = $("#conn-status");
  node.dataset.state = event.detail.state;
  node.textContent = event.detail.state === "connected" ? t("connected") : t("disconnected");
});
signal.on(EV.PRESENCE_UPDATE, (update) => {
  if (update.agent) board.agents.set(update.agent.user_id, update.agent);
  render();
});
signal.on(EV.CALL_STATE, (body) => {
  const call = body && body.call;
  if (!call) return;
  const known = board.calls.get(call.id);
  if (known && known.version > call.version) return;
  if (call.state === "ended") board.calls.delete(call.id);
  else board.calls.set(call.id, call);
  render();
});
signal.on(EV.QUEUE_UPDATE, (update) => {
  setQueue(update.department_id, update.calls, update.total);
  render();
});
setInterval(render, 1000);
render();
