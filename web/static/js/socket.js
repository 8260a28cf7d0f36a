// The Socket.IO connection of a page: acks become promises, {"error": …} acks become thrown
// SignalErrors, and every (re)connection runs the page's resynchronise callback, because the
// server keeps no per-socket state across a reconnect (docs/protocol.md).

const DEFAULT_TIMEOUT_MS = 10000;

/** An error answered by the server in an acknowledgement, or a timeout. */
export class SignalError extends Error {
  constructor(code, message, details) {
    super(message || code);
    this.name = "SignalError";
    this.code = code;
    this.details = details;
  }
}

export class Signal extends EventTarget {
  /**
   * @param {object} options
   * @param {number} [options.timeoutMs] how long an ack may take before request() rejects
   * @param {(signal: Signal) => Promise<void>} [options.onConnect] runs after every connect
   */
  constructor({ timeoutMs = DEFAULT_TIMEOUT_MS, onConnect = null } = {}) {
    super();
    this.timeoutMs = timeoutMs;
    this.onConnect = onConnect;
    this.state = "connecting";
    this.connectCount = 0;
    const io = globalThis.io;
    if (typeof io !== "function") {
      throw new Error("the Socket.IO client script did not load");
    }
    // The login cookie authenticates the connection; WebSocket first, long-polling as fallback.
    this.socket = io({
      path: "/socket.io",
      transports: ["websocket", "polling"],
      withCredentials: true,
      reconnection: true,
      reconnectionDelay: 500,
      reconnectionDelayMax: 5000,
      timeout: 10000,
    });
    this.socket.on("connect", () => this.#connected());
    this.socket.on("disconnect", (reason) => {
      this.#setState("disconnected", { reason });
      // The server closed the socket on purpose (e.g. logged out): socket.io will not retry.
      if (reason === "io server disconnect") {
        setTimeout(() => this.socket.connect(), 2000);
      }
    });
    this.socket.on("connect_error", (err) => {
      const data = err && err.data;
      this.#setState("disconnected", { reason: (data && data.message) || err.message, code: data && data.code });
      if (data && data.code === "unauthenticated") {
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      }
    });
  }

  async #connected() {
    this.connectCount += 1;
    this.#setState("connected", { first: this.connectCount === 1 });
    if (this.onConnect) {
      try {
        await this.onConnect(this);
      } catch (err) {
        this.dispatchEvent(new CustomEvent("error", { detail: err }));
      }
    }
  }

  #setState(state, detail) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...detail } }));
  }

  get connected() {
    return this.socket.connected;
  }

  /** Listen to a server event; the handler gets the payload. */
  on(event, handler) {
    this.socket.on(event, (payload) => {
      try {
        handler(payload);
      } catch (err) {
        console.error("handler of", event, "failed:", err);
      }
    });
  }

  /**
   * Send an event and wait for its acknowledgement.
   * @returns {Promise<any>} the result; rejects with SignalError on an error ack or a timeout
   */
  async request(event, payload = {}, { timeoutMs } = {}) {
    let answer;
    try {
      answer = await this.socket.timeout(timeoutMs || this.timeoutMs).emitWithAck(event, payload);
    } catch (err) {
      throw new SignalError("timeout", `${event}: no answer from the server in time`);
    }
    if (answer && typeof answer === "object" && answer.error) {
      const { code, message, details } = answer.error;
      throw new SignalError(code || "error", message || code, details);
    }
    return answer;
  }

  /** Fire and forget (for events without an acknowledgement). */
  send(event, payload = {}) {
    this.socket.emit(event, payload);
  }

  close() {
    this.socket.close();
  }
}
