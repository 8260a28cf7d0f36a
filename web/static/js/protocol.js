// Socket.IO event names the pages use; docs/protocol.md (signaling/schemas.py) is the contract.
export const EV = {
  // outlet -> server
  CALL_START: "call:start", // {item_id, applicant: {name, id_number, phone}, priority: bool} -> {call, position}
  CALL_CANCEL: "call:cancel", // {call_id}
  CALLBACK_CREATE: "callback:create", // {item_id, applicant, preferred_time?, note} -> {callback}
  // agent -> server
  PRESENCE_SET: "presence:set", // {state: "available" | "away"} -> {presence}
  PRESENCE_HEARTBEAT: "presence:heartbeat", // {} -> {server_time, presence}
  QUEUE_TAKE: "queue:take", // {call_id?} -> {call} (offered to me)
  CALLBACK_CALL: "callback:call", // {callback_id} -> {call} (rings at the outlet)
  // both sides
  CALL_ACCEPT: "call:accept", // {call_id} -> {call, ice_servers?}
  CALL_DECLINE: "call:decline",
  CALL_CONNECTED: "call:connected",
  CALL_END: "call:end",
  SESSION_RESUME: "session:resume", // {} -> {call, position?, presence?, queues?, callbacks?, agents?}
  MEDIA_OFFER: "media:offer", // {call_id, sdp, type, tracks} -> {sdp, type, ice_servers}
  MEDIA_KEYFRAME: "media:keyframe",
  // In the call (docs/protocol.md §8)
  CHAT_SEND: "chat:send", // {call_id, text} -> {id, at}
  LINK_REPORT: "link:report", // outlet: {call_id, level, step, rtt_ms, loss_in, loss_out, kbps_in, kbps_out} -> {}
  SNAPSHOT_TAKE: "media:snapshot", // agent: {call_id, source} -> {url, name, sha256, source, size, width, height}
  // server -> clients
  CALL_STATE: "call:state", // {call, events, ice_servers (connecting only)}
  QUEUE_UPDATE: "queue:update", // {department_id, department_name, calls}
  QUEUE_POSITION: "queue:position", // {call_id, position, waiting, estimated_wait_seconds, agents_online}
  PRESENCE_UPDATE: "presence:update", // {agent}
  CALLBACK_UPDATE: "callback:update", // {department_id, callbacks}
  MEDIA_EVENT: "media:event", // {call_id, kind, data}
  CHAT_MESSAGE: "chat:message", // {call_id, id, from, name, text, at}
  LINK_STATUS: "link:status", // to the agent: {call_id, from: "outlet", level, step, rtt_ms, …, at}
  DECISION: "case:decision",
};
