// The supervisor wallboard: calls waiting, oldest wait, agents by state, calls in progress.

import { $, el, formatDuration, pageConfig, translator } from "./dom.js";
import { Signal } from "./socket.js";
import { EV } from "./protocol.js";

const config = pageConfig();
const t = translator(config.messages || {});
const board = { waiting: [], calls: [], agents: [], receivedAt: Date.now() };

function seconds(value) {
  if (typeof value === "number") return Date.now() / 1000 - value;
  if (typeof value === "string") return (Date.now() - Date.parse(value)) / 1000;
  return 0;
}

function deptName(id) {
  return (config.departments && config.departments[String(id)]) || "";
}

function outletName(entry) {
  if (entry.outlet_name) return entry.outlet_name;
  const outlet = config.outlets && config.outlets[String(entry.outlet_id)];
  return outlet ? outlet.name : "";
}

function render() {
  const waiting = board.waiting;
  $("#tile-waiting").textContent = String(waiting.length);
  const oldest = waiting.reduce((max, c) => Math.max(max, seconds(c.queued_at)), 0);
  $("#tile-oldest").textContent = waiting.length ? formatDuration(t, oldest) : "—";
  $("#tile-calls").textContent = String(board.calls.length);
  const counts = { available: 0, busy: 0, away: 0, offline: 0 };
  for (const agent of board.agents) counts[agent.state] = (counts[agent.state] || 0) + 1;
  $("#tile-available").textContent = String(counts.available);
  $("#agent-states").replaceChildren(
    ...Object.entries(counts).map(([s, n]) => el("span", { cls: `state-${s}`, attrs: { "data-state": s }, text: `${t(`presence_${s}`)} ${n}` })),
  );
  $("#agent-rows").replaceChildren(
    ...board.agents.map((agent) =>
      el("tr", { children: [
        el("td", { text: agent.display_name || agent.name || agent.username || "" }),
        el("td", { children: [el("span", { cls: `state-${agent.state}`, text: t(`presence_${agent.state}`) })] }),
        el("td", { text: agent.since ? formatDuration(t, seconds(agent.since)) : "" }),
      ] }),
    ),
  );
  $("#waiting-rows").replaceChildren(
    ...waiting.map((c) =>
      el("tr", { cls: c.priority === "priority" ? "priority" : "", children: [
        el("td", { text: formatDuration(t, seconds(c.queued_at)) }),
        el("td", { text: c.department_name || deptName(c.department_id) }),
        el("td", { text: outletName(c) }),
        el("td", { text: c.item_name || "" }),
        el("td", { text: c.priority === "priority" ? t("priority_high") : t("priority_normal") }),
      ] }),
    ),
  );
  $("#call-rows").replaceChildren(
    ...board.calls.map((c) =>
      el("tr", { children: [
        el("td", { text: formatDuration(t, seconds(c.answered_at || c.offered_at || c.queued_at)) }),
        el("td", { text: c.department_name || deptName(c.department_id) }),
        el("td", { text: outletName(c) }),
        el("td", { text: c.item_name || "" }),
        el("td", { text: c.agent_name || "" }),
        el("td", { text: c.state || "" }),
      ] }),
    ),
  );
  $("#calls-empty").hidden = board.calls.length > 0;
}

function apply(update) {
  if (!update) return;
  if (update.waiting) board.waiting = update.waiting;
  if (update.calls) board.calls = update.calls;
  if (update.agents) board.agents = update.agents;
  render();
}

const signal = new Signal({
  onConnect: async (s) => apply(await s.request(EV.WALLBOARD_SUBSCRIBE, {})),
});
signal.addEventListener("state", (event) => {
  const node = $("#conn-status");
  node.dataset.state = event.detail.state;
  node.textContent = event.detail.state === "connected" ? t("connected") : t("disconnected");
});
signal.on(EV.WALLBOARD_UPDATE, apply);
setInterval(render, 1000);
render();
