// The citizen's rating after a call (好差评): five large buttons and an optional comment.

import { $, $$, show } from "./dom.js";

export class RatingForm {
  /**
   * @param {object} o
   * @param {(key: string, values?: object) => string} o.t translator
   * @param {string} o.csrfToken sent with the POST
   */
  constructor({ t, csrfToken }) {
    this.t = t;
    this.csrfToken = csrfToken;
    this.level = null;
    this.sessionId = null;
    $("#rating-buttons").addEventListener("click", (event) => this.#pick(event));
    $("#rating-submit").addEventListener("click", () => this.submit());
  }

  /** Show the form for a finished session. */
  open(sessionId) {
    this.reset();
    this.sessionId = sessionId;
    show($("#rating-box"), true);
    show($("#rating-done"), false);
  }

  reset() {
    this.level = null;
    for (const b of $$(".rating-btn")) b.setAttribute("aria-pressed", "false");
    $("#rating-comment").value = "";
    show($("#rating-error"), false);
  }

  #pick(event) {
    const button = event.target.closest(".rating-btn");
    if (!button) return;
    this.level = Number(button.dataset.level);
    for (const b of $$(".rating-btn")) b.setAttribute("aria-pressed", String(b === button));
  }

  async submit() {
    const errorNode = $("#rating-error");
    if (!this.level) {
      errorNode.textContent = this.t("rating_pick");
      show(errorNode, true);
      return;
    }
    const response = await fetch(`/api/sessions/${encodeURIComponent(this.sessionId)}/rating`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": this.csrfToken },
      body: JSON.stringify({ level: this.level, comment: $("#rating-comment").value.trim() }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      errorNode.textContent = this.t("error") + ((body.error && body.error.message) || response.status);
      show(errorNode, true);
      return;
    }
    show(errorNode, false);
    show($("#rating-box"), false);
    $("#rating-done").textContent = this.t("rating_thanks");
    show($("#rating-done"), true);
  }
}
