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
  CALL_ACCEPT: "call:accept", // {call_id} -> {call}
  CALL_DECLINE: "call:decline",
  CALL_CONNECTED: "call:connected",
  CALL_END: "call:end",
  SESSION_RESUME: "session:resume", // {} -> {call, position?, presence?, queues?, callbacks?, agents?}
  MEDIA_OFFER: "media:offer", // {call_id, sdp, type, tracks} -> {sdp, type, ice_servers}
  MEDIA_KEYFRAME: "media:keyframe",
  // Not in the server yet (docs/ui.md, "waiting on signalling"): sent when it lands.
  CHAT_SEND: "chat:send",
  LINK_REPORT: "link:report",
  SNAPSHOT_TAKE: "media:snapshot",
  // server -> clients
  CALL_STATE: "call:state", // {call, events}
  QUEUE_UPDATE: "queue:update", // {department_id, department_name, calls}
  QUEUE_POSITION: "queue:position", // {call_id, position, waiting, estimated_wait_seconds, agents_online}
  PRESENCE_UPDATE: "presence:update", // {agent}
  CALLBACK_UPDATE: "callback:update", // {department_id, callbacks}
  MEDIA_EVENT: "media:event", // {call_id, kind, data}
  CHAT_MESSAGE: "chat:message",
  LINK_STATUS: "link:status",
  DECISION: "case:decision",
};
