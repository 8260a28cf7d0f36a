// Tell the server that media flows (call:connected), so a call leaves "connecting" even
// if the server missed its own media event. The server normally moves the call itself the
// moment both sides' media connect, so this waits a little first (no second writer racing
// the first) and is retried a few times; it is idempotent on the server.

import { EV } from "./protocol.js";

const ATTEMPTS = 5;
const GRACE_MS = 3000;

/** Report `callId` connected while `stillConnecting()` says so; resolves with the call or null. */
export async function reportConnected(signal, callId, stillConnecting) {
  await new Promise((resolve) => setTimeout(resolve, GRACE_MS));
  for (let attempt = 0; attempt < ATTEMPTS && stillConnecting(); attempt += 1) {
    try {
      const result = await signal.request(EV.CALL_CONNECTED, { call_id: callId });
      return result.call;
    } catch (err) {
      if (err.code === "conflict" || err.code === "forbidden" || err.code === "not_found") return null;
      await new Promise((resolve) => setTimeout(resolve, 1000 * (attempt + 1)));
    }
  }
  return null;
}
