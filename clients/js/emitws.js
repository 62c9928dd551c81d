// emitws browser and Node client: named events, requests with replies, and
// server-to-client RPC over one WebSocket, as PROTOCOL.md (emitws.v1) defines.
// No dependencies: it uses the global WebSocket (browsers, Node 22+, Node 20
// with --experimental-websocket) or the constructor passed as `WebSocket`.

export const PROTOCOL = 'emitws.v1';

const EVENT = 0;
const REQUEST = 1;
const REPLY = 2;
const ERROR = 3;

/** Upper bound of the reconnect delay, whatever the attempt count. */
const MAX_RECONNECT_DELAY = 30_000;
/** Envelopes kept while disconnected, waiting for the next connection. */
const MAX_QUEUED = 1_000;

/** A failed request: `code` is the machine-readable part (see PROTOCOL.md §4). */
export class EmitError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'EmitError';
    this.code = code;
  }
}

const defaults = {
  reconnect: true,
  reconnectDelay: 500,
  maxRetries: Infinity,
  connectTimeout: 10_000,
  requestTimeout: 10_000,
  WebSocket: undefined,
};

export class EmitClient {
  /**
   * Connects and resolves once the first connection is open. Rejects if it
   * cannot be opened (after `maxRetries` attempts when reconnecting).
   */
  static connect(url, options = {}) {
    const client = new EmitClient(url, options);
    return new Promise((resolve, reject) => {
      client._firstOpen = { resolve: () => resolve(client), reject };
      client._open();
    });
  }

  /** Use `EmitClient.connect`; the constructor does not connect. */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...defaults, ...options };
    this._listeners = new Map();
    this._procedures = new Map();
    this._pending = new Map();
    this._queue = [];
    this._nextId = 1;
    this._attempt = 0;
    this._socket = null;
    this._closedByUser = false;
    this._timer = null;
    this._firstOpen = null;
    this._everOpened = false;
  }

  /** Whether a connection is open now. */
  get connected() {
    return this._socket !== null && this._socket.readyState === 1;
  }

  /** Sends an event; while reconnecting it waits in a bounded queue. */
  emit(event, data) {
    this._send(data === undefined ? [EVENT, event] : [EVENT, event, data]);
  }

  /**
   * Sends a request and resolves with the reply's data, or rejects with an
   * `EmitError` (the server's error, `timeout`, or `disconnected`).
   */
  request(event, data, { timeout = this.options.requestTimeout } = {}) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new EmitError('timeout', `no reply to ${event} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer });
      this._send(data === undefined ? [REQUEST, id, event] : [REQUEST, id, event, data]);
    });
  }

  /** Listens to an event (or a system event: `@connection`, `@disconnect`, `@reconnect`, `@error`, `@any`). */
  on(event, listener) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(listener);
    return this;
  }

  /** Removes one listener, or all of an event's listeners when none is given. */
  off(event, listener) {
    if (listener === undefined) this._listeners.delete(event);
    else this._listeners.get(event)?.delete(listener);
    return this;
  }

  /** Answers the server's requests for `name`; `procedure(data)` may return a value or a promise. */
  register(name, procedure) {
    this._procedures.set(name, procedure);
    return this;
  }

  /** A view whose event names start with `prefix` (`client.ns('/chat').emit('/say', x)` sends `/chat/say`). */
  ns(prefix) {
    return new Namespace(this, prefix);
  }

  /** Closes for good: no reconnect; pending requests fail with `disconnected`. */
  close(code = 1000, reason = '') {
    this._closedByUser = true;
    clearTimeout(this._timer);
    if (this._socket) this._socket.close(code, reason);
    this._failPending('closed by the client');
    this._queue = [];
  }

  _open() {
    const WebSocketImpl = this.options.WebSocket ?? globalThis.WebSocket;
    if (!WebSocketImpl) {
      throw new Error('no WebSocket: use Node 22+, Node 20 with --experimental-websocket, or pass options.WebSocket');
    }
    const socket = new WebSocketImpl(this.url, [PROTOCOL]);
    this._socket = socket;
    let opened = false;
    const timeout = setTimeout(() => socket.close(), this.options.connectTimeout);
    socket.onopen = () => {
      clearTimeout(timeout);
      opened = true;
      const reconnected = this._everOpened;
      this._everOpened = true;
      this._attempt = 0;
      const queued = this._queue;
      this._queue = [];
      for (const text of queued) socket.send(text);
      this._dispatch('@connection', { reconnected });
      if (reconnected) this._dispatch('@reconnect', {});
      if (this._firstOpen) {
        this._firstOpen.resolve();
        this._firstOpen = null;
      }
    };
    socket.onmessage = (message) => this._receive(message.data);
    const closed = ({ code, reason }) => {
      clearTimeout(timeout);
      if (this._socket !== socket) return;
      this._socket = null;
      if (opened) {
        this._failPending(`connection closed (${code})`);
        this._dispatch('@disconnect', { code, reason });
      }
      this._retry(code);
    };
    socket.onclose = closed;
    // Browsers follow an error with a close event, which decides what happens
    // next; Node 20's WebSocket fires no close when it cannot connect at all.
    socket.onerror = () => {
      if (!opened) closed({ code: 1006, reason: '' });
    };
  }

  _retry(code) {
    const { reconnect, maxRetries, reconnectDelay } = this.options;
    if (this._closedByUser) return;
    if (!reconnect || this._attempt >= maxRetries) {
      this._queue = [];
      if (this._firstOpen) {
        this._firstOpen.reject(new EmitError('connect_failed', `cannot connect to ${this.url} (close ${code})`));
        this._firstOpen = null;
      }
      return;
    }
    // Exponential backoff with jitter, so that a restarted server is not hit by every client at once.
    const delay = Math.min(reconnectDelay * 2 ** this._attempt, MAX_RECONNECT_DELAY) * (0.5 + Math.random() / 2);
    this._attempt += 1;
    this._timer = setTimeout(() => this._open(), delay);
  }

  _send(envelope) {
    const text = JSON.stringify(envelope);
    if (this.connected) {
      this._socket.send(text);
    } else if (!this._closedByUser && this._queue.length < MAX_QUEUED) {
      this._queue.push(text);
    } else {
      this._dispatch('@error', { code: 'disconnected', message: 'not connected: envelope dropped' });
    }
  }

  _receive(text) {
    let envelope;
    try {
      envelope = JSON.parse(text);
    } catch {
      this._dispatch('@error', { code: 'bad_request', message: 'the server sent invalid JSON' });
      return;
    }
    if (!Array.isArray(envelope)) return;
    const [type, a, b, c] = envelope;
    switch (type) {
      case EVENT:
        this._dispatch(a, b ?? null);
        break;
      case REQUEST:
        this._answer(a, b, c ?? null);
        break;
      case REPLY:
      case ERROR: {
        const pending = this._pending.get(a);
        if (!pending) return;
        this._pending.delete(a);
        clearTimeout(pending.timer);
        if (type === REPLY) pending.resolve(b ?? null);
        else pending.reject(new EmitError(b?.code ?? 'internal', b?.message));
        break;
      }
      default:
        break; // Types from later versions are ignored.
    }
  }

  async _answer(id, name, data) {
    const procedure = this._procedures.get(name);
    if (!procedure) {
      this._send([ERROR, id, { code: 'not_registered', message: `no procedure ${name}` }]);
      return;
    }
    try {
      const result = await procedure(data);
      this._send([REPLY, id, result === undefined ? null : result]);
    } catch (error) {
      this._send([ERROR, id, { code: 'execution_failed', message: String(error?.message ?? error) }]);
    }
  }

  _dispatch(event, data) {
    const listeners = this._listeners.get(event);
    if (listeners && listeners.size > 0) {
      for (const listener of [...listeners]) listener(data);
    } else if (!event.startsWith('@')) {
      for (const listener of [...(this._listeners.get('@any') ?? [])]) listener(event, data);
    }
  }

  _failPending(why) {
    for (const [id, pending] of this._pending) {
      clearTimeout(pending.timer);
      pending.reject(new EmitError('disconnected', why));
      this._pending.delete(id);
    }
  }
}

/** Event names under a prefix; nestable. */
export class Namespace {
  constructor(client, prefix) {
    this.client = client;
    this.prefix = prefix;
  }

  emit(event, data) {
    this.client.emit(this.prefix + event, data);
  }

  request(event, data, options) {
    return this.client.request(this.prefix + event, data, options);
  }

  on(event, listener) {
    this.client.on(this.prefix + event, listener);
    return this;
  }

  off(event, listener) {
    this.client.off(this.prefix + event, listener);
    return this;
  }

  register(name, procedure) {
    this.client.register(this.prefix + name, procedure);
    return this;
  }

  ns(prefix) {
    return new Namespace(this.client, this.prefix + prefix);
  }
}
