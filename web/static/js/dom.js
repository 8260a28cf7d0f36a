// Small DOM helpers: user data reaches the page only through textContent.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

/** Create an element with text content and attributes (never innerHTML). */
export function el(tag, { text = null, cls = null, attrs = {}, children = [] } = {}) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== null && text !== undefined) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(key, String(value));
  }
  for (const child of children) node.append(child);
  return node;
}

/** The page's JSON configuration from <script type="application/json" id="page-config">. */
export function pageConfig() {
  const node = document.getElementById("page-config");
  return node ? JSON.parse(node.textContent) : {};
}

/** A translator over the page's message dictionary: t("queue_wait", {minutes: 3}). */
export function translator(messages) {
  return (key, values = {}) => {
    let text = messages[key] ?? key;
    for (const [name, value] of Object.entries(values)) {
      text = text.split(`%(${name})s`).join(String(value));
    }
    return text.split("%%").join("%");
  };
}

export function show(node, visible = true) {
  if (node) node.hidden = !visible;
}

/** "12 秒" / "3 分 5 秒" for a number of seconds. */
export function formatDuration(t, seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return t("waiting_seconds", { s });
  return t("waiting_minutes", { m: Math.floor(s / 60), s: s % 60 });
}

/** A short two-tone beep through WebAudio (no audio file); resolves when it has played. */
export async function beep(context) {
  const ctx = context || new AudioContext();
  if (ctx.state === "suspended") {
    try { await ctx.resume(); } catch { /* autoplay policy: the visible alert still shows */ }
  }
  const now = ctx.currentTime;
  for (const [offset, freq] of [[0, 880], [0.25, 660], [0.5, 880]]) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, now + offset);
    gain.gain.exponentialRampToValueAtTime(0.3, now + offset + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, now + offset + 0.2);
    osc.connect(gain).connect(ctx.destination);
    osc.start(now + offset);
    osc.stop(now + offset + 0.22);
  }
  return ctx;
}

/** Plain words for an error: the translated text of its code if there is one, else its message. */
export function explain(t, err) {
  const key = `error_${err && err.code}`;
  const text = t(key);
  return text !== key ? text : t("error") + ((err && err.message) || String(err));
}
