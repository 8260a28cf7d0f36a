// Socket.IO event names the pages use (docs/protocol.md is the contract; keep in step).
export const EV = {
  // outlet -> server
  CALL_REQUEST: "call:request",
  CALL_CANCEL: "call:cancel",
  CALLBACK_REQUEST: "callback:request",
  // agent -> server
  PRESENCE_SET: "presence:set",
  CALL_TAKE: "call:take",
  CALL_ACCEPT: "call:accept",
  CALL_DECLINE: "call:decline",
  CALLBACK_CALL: "callback:call",
  SNAPSHOT_TAKE: "snapshot:take",
  // both
  CALL_END: "call:end",
  SYNC: "session:sync",
  MEDIA_OFFER: "media:offer",
  CHAT_SEND: "chat:send",
  LINK_REPORT: "link:report",
  // supervisor
  WALLBOARD_SUBSCRIBE: "wallboard:subscribe",
  // server -> clients
  QUEUE_POSITION: "queue:position",
  QUEUE_UPDATE: "queue:update",
  CALLBACKS_UPDATE: "callbacks:update",
  CALL_OFFERED: "call:offered",
  CALL_STATE: "call:state",
  CALL_ENDED: "call:ended",
  CHAT_MESSAGE: "chat:message",
  LINK_STATUS: "link:status",
  DECISION: "case:decision",
  PRESENCE_UPDATE: "presence:update",
  WALLBOARD_UPDATE: "wallboard:update",
};
