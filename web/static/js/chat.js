// Text chat inside a call (both pages).

import { el } from "./dom.js";
import { EV } from "./protocol.js";

export class Chat {
  constructor({ signal, log, form, input, t, sessionId, me = "outlet" }) {
    this.signal = signal;
    this.log = log;
    this.input = input;
    this.t = t;
    this.sessionId = sessionId;
    this.me = me;
    this.seen = new Set();
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
  }

  async send() {
    const text = this.input.value.trim();
    const id = this.sessionId();
    if (!text || !id) return;
    this.input.value = "";
    try {
      const message = await this.signal.request(EV.CHAT_SEND, { call_id: id, text });
      this.receive({ ...(message || {}), text, mine: true });
    } catch (err) {
      this.add(this.t("error") + err.message, "system");
    }
  }

  receive(message) {
    if (!message) return;
    const key = message.id || message.seq;
    if (key !== undefined && this.seen.has(key)) return;
    if (key !== undefined) this.seen.add(key);
    const mine = message.mine || message.from === this.me;
    this.add(message.text, mine ? "mine" : "theirs");
  }

  add(text, who) {
    const label = who === "mine" ? this.t("chat_me") : who === "theirs" ? this.t("chat_them") : "";
    const item = el("li", { cls: `chat-${who}`, children: [el("strong", { text: label ? label + "：" : "" }), el("span", { text })] });
    this.log.append(item);
    this.log.scrollTop = this.log.scrollHeight;
  }
}
