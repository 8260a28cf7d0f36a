// The service-item picker: search by name or pinyin initials, high-frequency items first.

import { el } from "./dom.js";

/** Items matching `query` (name substring, or initials prefix/substring), best first. */
export function searchItems(items, query) {
  const q = String(query || "").trim().toLowerCase();
  if (!q) return items.slice();
  const scored = [];
  for (const item of items) {
    const name = item.name.toLowerCase();
    const initials = (item.initials || "").toLowerCase();
    let score = null;
    if (initials.startsWith(q)) score = 0;
    else if (name.startsWith(q)) score = 1;
    else if (name.includes(q)) score = 2;
    else if (initials.includes(q)) score = 3;
    else if (item.code && item.code.toLowerCase() === q) score = 0;
    if (score !== null) scored.push([score, item.high_frequency ? 0 : 1, item]);
  }
  scored.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  return scored.map((entry) => entry[2]);
}

export class ItemPicker {
  constructor({ input, list, chosen, emptyText }) {
    this.input = input;
    this.list = list;
    this.chosen = chosen;
    this.emptyText = emptyText;
    this.items = [];
    this.selected = null;
    this.input.addEventListener("input", () => this.render());
    this.list.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-id]");
      if (button) this.select(Number(button.dataset.id));
    });
  }

  async load() {
    const response = await fetch("/api/items", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error(`/api/items: HTTP ${response.status}`);
    const body = await response.json();
    // The server sends high-frequency items first; keep that order for an empty query.
    this.items = body.items;
    this.render();
  }

  render() {
    const found = searchItems(this.items, this.input.value).slice(0, 12);
    if (!found.length) {
      this.list.replaceChildren(el("li", { text: this.emptyText, cls: "item-empty" }));
      return;
    }
    this.list.replaceChildren(
      ...found.map((item) =>
        el("li", {
          children: [
            el("button", {
              cls: "item-btn" + (item.high_frequency ? " frequent" : "") + (this.selected && this.selected.id === item.id ? " selected" : ""),
              attrs: { type: "button", "data-id": item.id, "data-initials": item.initials, role: "option",
                "aria-selected": String(Boolean(this.selected && this.selected.id === item.id)) },
              text: item.name,
            }),
          ],
        }),
      ),
    );
  }

  select(id) {
    this.selected = this.items.find((item) => item.id === id) || null;
    this.chosen.textContent = this.selected ? this.selected.name : "";
    this.chosen.hidden = !this.selected;
    this.render();
  }

  clear() {
    this.selected = null;
    this.input.value = "";
    this.chosen.hidden = true;
    this.render();
  }
}
