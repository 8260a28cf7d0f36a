// The pre-call network check: a series of small HTTP round trips to the server.
// Over TCP a lost packet shows up as a late answer (retransmission), so an answer later
// than LATE_MS or none at all counts as lost; the in-call indicator uses real RTP figures.

const LATE_MS = 1500;

/** Measure `count` round trips; returns {rtt (median ms), loss (0..1), verdict}. */
export async function measureNetwork({ count = 10, gapMs = 100, url = "/api/ping" } = {}) {
  const times = [];
  let lost = 0;
  for (let i = 0; i < count; i += 1) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), LATE_MS);
    const started = performance.now();
    try {
      const response = await fetch(`${url}?n=${i}`, { cache: "no-store", signal: controller.signal, credentials: "same-origin" });
      await response.arrayBuffer();
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      times.push(performance.now() - started);
    } catch {
      lost += 1;
    } finally {
      clearTimeout(timer);
    }
    await new Promise((resolve) => setTimeout(resolve, gapMs));
  }
  times.sort((a, b) => a - b);
  const rtt = times.length ? Math.round(times[Math.floor(times.length / 2)]) : null;
  const loss = lost / count;
  return { rtt, loss, verdict: verdict(rtt, loss) };
}

/** "good" | "fair" | "poor" | "fail" for a round trip (ms) and a loss fraction. */
export function verdict(rtt, loss) {
  if (rtt === null || loss >= 0.5) return "fail";
  if (rtt > 400 || loss > 0.1) return "poor";
  if (rtt > 150 || loss > 0.02) return "fair";
  return "good";
}
