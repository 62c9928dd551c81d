// emitws browser and Node client: named events, requests with replies, and
// server-to-client RPC over one WebSocket, as PROTOCOL.md (emitws.v1) defines.
// No dependencies: it uses the global WebSocket (browsers, Node 22+, Node 20
// with --experimental-websocket) or the constructor passed as `WebSocket`.

export const PROTOCOL = 'emitws.v1';
/** The subprotocol with binary envelopes (PROTOCOL.md §10), offered with the `binary` option. */
export const PROTOCOL_V2 = 'emitws.v2';

const EVENT = 0;
const REQUEST = 1;
const REPLY = 2;
const ERROR = 3;
/** Binary envelope type of a broadcast with its place in a room's stream (PROTOCOL.md §10, §13). */
const EVENT_AT = 4;

/** The largest id (PROTOCOL.md §2): `Number.MAX_SAFE_INTEGER`. */
const MAX_ID = 2 ** 53 - 1;

/** Whether `data` is bytes to send as a binary envelope: an ArrayBuffer or a view of one (Uint8Array, Buffer, DataView). */
const isBytes = (data) => data instanceof ArrayBuffer || ArrayBuffer.isView(data);

/** `data` (an ArrayBuffer or a view) as a Uint8Array over the same memory. */
const asUint8 = (data) =>
  data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);

/**
 * A binary envelope (PROTOCOL.md §10): type, the id in LEB128 (types 1-3),
 * the name's length and UTF-8 bytes (types 0-1), then the payload.
 */
const encodeBinary = (type, id, name, payload) => {
  const idBytes = [];
  for (let rest = id ?? 0; id !== undefined; ) {
    // Division, not shifts: ids go up to 2^53 - 1, beyond 32-bit operators.
    const low = rest % 128;
    rest = Math.floor(rest / 128);
    idBytes.push(rest > 0 ? low | 0x80 : low);
    if (rest === 0) break;
  }
  const nameBytes = name === undefined ? null : new TextEncoder().encode(name);
  if (nameBytes && (nameBytes.length < 1 || nameBytes.length > 255)) {
    throw new EmitError('bad_request', `the event name ${name} does not fit a binary envelope (1 to 255 bytes)`);
  }
  const bytes = asUint8(payload);
  const out = new Uint8Array(1 + idBytes.length + (nameBytes ? 1 + nameBytes.length : 0) + bytes.length);
  let at = 0;
  out[at++] = type;
  for (const b of idBytes) out[at++] = b;
  if (nameBytes) {
    out[at++] = nameBytes.length;
    out.set(nameBytes, at);
    at += nameBytes.length;
  }
  out.set(bytes, at);
  return out;
};

/**
 * Reads a binary envelope: `{type, id, name, payload}` (payload a Uint8Array
 * view of the frame; type 4 adds `position`, its `{room, offset, epoch}`
 * read from JSON), `{type}` alone for a type from a later version, or null
 * when the header is malformed.
 */
const decodeBinary = (frame) => {
  const bytes = asUint8(frame);
  if (bytes.length === 0) return null;
  const type = bytes[0];
  if (type > EVENT_AT) return { type };
  let at = 1;
  let id;
  // A length byte (1 to 255), then as many bytes of UTF-8; undefined if malformed.
  const text = () => {
    const length = bytes[at++];
    if (!length || at + length > bytes.length) return undefined;
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(at, (at += length)));
    } catch {
      return undefined;
    }
  };
  if (type === EVENT_AT) {
    const name = text();
    const json = name === undefined ? undefined : text();
    if (json === undefined) return null;
    let position;
    try {
      position = JSON.parse(json);
    } catch {
      return null;
    }
    return { type, name, position, payload: bytes.subarray(at) };
  }
  if (type !== EVENT) {
    id = 0;
    for (let i = 0; ; i++) {
      if (i === 8 || at >= bytes.length) return null;
      const b = bytes[at++];
      id += (b & 0x7f) * 2 ** (7 * i);
      if ((b & 0x80) === 0) {
        if ((i > 0 && b === 0) || id < 1 || id > MAX_ID) return null;
        break;
      }
    }
  }
  let name;
  if (type === EVENT || type === REQUEST) {
    name = text();
    if (name === undefined) return null;
  }
  return { type, id, name, payload: bytes.subarray(at) };
};

/** Close code of an attempt given up because no `@ready` came within `connectTimeout` (PROTOCOL.md §6). */
const CLOSE_TIMEOUT = 4408;
/** Close code of a drained server; its reason is the URL to move to, or empty (PROTOCOL.md §6). */
const CLOSE_DRAIN = 1012;
/** Close code of a client moving to another server (its `jump`): the session is kept (PROTOCOL.md §6, §13). */
const CLOSE_MOVING = 4001;

/** Whether `url` is a WebSocket URL (`ws://` or `wss://`). */
const isWebSocketUrl = (url) => typeof url === 'string' && /^wss?:\/\/[^/?#]/i.test(url);

/**
 * Whether the server keeps the session after a close with `code` (PROTOCOL.md
 * §13): a loss nobody meant (no close frame, going away, a server error, a
 * drain, try again later, heartbeats unanswered) or a jump. Any other code ends it.
 */
const sessionKept = (code) => [1001, 1005, 1006, 1011, 1012, 1013, CLOSE_MOVING, 4408].includes(code);

/**
 * Whether the server's close `code` says "do not reconnect" (PROTOCOL.md §6):
 * a drop, a refusal or a takeover — every 4xxx code but a timeout (4408) and
 * a move (4001). The client then goes offline.
 */
const refusesRetry = (code) => code >= 4000 && code < 5000 && code !== CLOSE_TIMEOUT && code !== CLOSE_MOVING;

/** `url` with `parameter` (`name=value`, encoded) added to its query (before a fragment), the application's parameters untouched. */
const withParameter = (url, parameter) => {
  const hash = url.indexOf('#');
  const [base, fragment] = hash < 0 ? [url, ''] : [url.slice(0, hash), url.slice(hash)];
  const separator = !base.includes('?') ? '?' : /[?&]$/.test(base) ? '' : '&';
  return `${base}${separator}${parameter}${fragment}`;
};

/** `url` with `emitws_resume=1` added to its query. */
const resumeUrl = (url) => withParameter(url, 'emitws_resume=1');

/** `url` with the connection's metadata as `emitws_meta=<JSON, percent-encoded>` (PROTOCOL.md §14). */
const metaUrl = (url, meta) => withParameter(url, `emitws_meta=${encodeURIComponent(JSON.stringify(meta))}`);

/** The epoch and offset of a delivery's fourth element or of a room in the `@resume` reply, or null. */
const position = (value) =>
  typeof value?.epoch === 'string' && Number.isSafeInteger(value?.offset) && value.offset >= 0
    ? { epoch: value.epoch, offset: value.offset }
    : null;

/** The outcome reported when `@resume` got an error reply, or `@ready` came without its reply: nothing resumed. */
const notResumed = (socket) => ({ resumed: false, socket, rooms: {}, direct: { recovered: false } });

/**
 * The client's statuses, in the order of a first connection; each change is
 * an `@status` event `{status, previous}`.
 * - `idle`: made by `new EmitClient`, not opened yet;
 * - `connecting`: the first connection attempt is under way;
 * - `authenticating`: a socket is open, the server's `@ready` has not come;
 * - `ready`: admitted, envelopes go out at once;
 * - `reconnecting`: the connection was lost or an attempt failed;
 * - `offline`: closed for good, by `close()` or after giving up (attempts
 *   used up, or a 4xxx close but 4408 and 4001: "do not retry", PROTOCOL.md §6).
 */
export const Status = Object.freeze({
  IDLE: 'idle',
  CONNECTING: 'connecting',
  AUTHENTICATING: 'authenticating',
  READY: 'ready',
  RECONNECTING: 'reconnecting',
  OFFLINE: 'offline',
});

/** The application-level ping, a request either side answers by itself (PROTOCOL.md §9.1). */
const PING = '@ping';

/**
 * The WebSocket API's `readyState` numbers (openspeed's too), which
 * `client.readyState` gives: `CONNECTING` (0) while connecting,
 * authenticating or reconnecting, `OPEN` (1) when ready, `CLOSING` (2) from
 * `close()` until the socket has closed, `CLOSED` (3) when idle or offline.
 */
export const ReadyState = Object.freeze({ CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });

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
  maxReconnectDelay: 30_000,
  maxRetries: Infinity,
  connectTimeout: 10_000,
  requestTimeout: 10_000,
  maxQueued: 1_000,
  auth: undefined,
  meta: undefined,
  procedures: undefined,
  WebSocket: undefined,
  binary: false,
};

export class EmitClient {
  /** `readyState` numbers, as on WebSocket (see `ReadyState`). */
  static CONNECTING = ReadyState.CONNECTING;
  static OPEN = ReadyState.OPEN;
  static CLOSING = ReadyState.CLOSING;
  static CLOSED = ReadyState.CLOSED;

  /** The session's resume token (PROTOCOL.md §13): a secret, in a private field so that logging the client does not show it. */
  #resumeToken = null;

  /**
   * Connects and resolves once the first connection is READY (the server
   * sent `@ready`). Rejects with `connect_failed` if it cannot (after
   * `maxRetries` attempts when reconnecting).
   */
  static connect(url, options = {}) {
    return new EmitClient(url, options).open();
  }

  /**
   * A client in status `idle`: nothing is sent until `open()`, so procedures
   * (`@challenge`) and listeners can be set first. Options: `reconnect`,
   * `reconnectDelay`, `maxReconnectDelay`, `maxRetries`, `connectTimeout`
   * (until `@ready`), `requestTimeout`, `maxQueued`, `auth` (`{event, data}`:
   * a request sent first on every connection, for first-message auth),
   * `meta` (a JSON value sent with every connection, PROTOCOL.md §14),
   * `procedures` (`{name: fn}`, registered at once), `WebSocket`, `binary`
   * (offer `emitws.v2` before `emitws.v1`: bytes — an ArrayBuffer or a view
   * such as Uint8Array or Buffer — given to `emit`, `request` or returned by
   * a procedure then travel as binary envelopes, and binary events and
   * replies arrive as Uint8Array; PROTOCOL.md §10).
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = { ...defaults, ...options };
    this._listeners = new Map();
    this._procedures = new Map(Object.entries(this.options.procedures ?? {}));
    this._pending = new Map();
    this._queue = [];
    this._nextId = 1;
    this._attempt = 0;
    this._socket = null;
    this._status = Status.IDLE;
    this._offline = null;
    this._timer = null;
    this._opening = null;
    this._everOpened = false;
    this._everReady = false;
    this._authId = null;
    this._welcome = null;
    // Resume (PROTOCOL.md §13): the request on the current socket, until answered.
    this._resumeId = null;
    /** Per room with history: `{epoch, offset}` of the latest broadcast received. */
    this._positions = new Map();
    this._resumed = null;
    /** The socket `close()` is closing, until its close event. */
    this._closing = null;
  }

  /**
   * Starts connecting (from `idle`) and resolves with the client once it is
   * READY; rejects with `connect_failed` once the retries are used up, or
   * `closed`. Called again, it gives the same outcome.
   */
  open() {
    if (!this._opening) {
      this._opening = new Promise((resolve, reject) => {
        this._firstReady = { resolve: () => resolve(this), reject };
      });
      if (this._offline) {
        this._settleFirst(this._offline);
      } else if (this._status === Status.IDLE) {
        this._setStatus(Status.CONNECTING);
        this._open();
      }
    }
    return this._opening;
  }

  /** Where the client is: one of `Status`. */
  get status() {
    return this._status;
  }

  /** The data of the current connection's `@ready` (`{socket, user, …}`, the resume token left out), `null` while not ready. */
  get welcome() {
    return this._welcome;
  }

  /** The socket's id from the current connection's `@ready` (the same after a resume), `null` while not ready. */
  get socketId() {
    return this._welcome?.socket ?? null;
  }

  /**
   * Whether the current connection's resume recovered every broadcast `room`
   * had while the client was away (PROTOCOL.md §13): `true`, or `false` when
   * it could not (the session was not resumed, the room's epoch changed or
   * its history no longer reaches back, or it has no history: refetch the
   * room). `null` when the current connection did not resume (the first one,
   * or one after the session ended), or its resume is not answered yet.
   */
  recovered(room) {
    if (!this._resumed) return null;
    return this._resumed.resumed === true && this._resumed.rooms?.[room]?.recovered === true;
  }

  /**
   * Where the client is, as one of `ReadyState`'s numbers (also
   * `EmitClient.CONNECTING` … `EmitClient.CLOSED`, as on WebSocket):
   * `CONNECTING` while connecting, authenticating or reconnecting, `OPEN`
   * when ready, `CLOSING` from `close()` until its socket has closed,
   * `CLOSED` when idle or offline. `status` tells more.
   */
  get readyState() {
    if (this._closing !== null) return ReadyState.CLOSING;
    switch (this._status) {
      case Status.READY:
        return ReadyState.OPEN;
      case Status.IDLE:
      case Status.OFFLINE:
        return ReadyState.CLOSED;
      default:
        return ReadyState.CONNECTING;
    }
  }

  /**
   * Measures a round trip to the server at the application level: sends
   * the `@ping` request, which the server answers at once without running
   * any handler (PROTOCOL.md §9.1), and resolves with the milliseconds to
   * its answer (made before ready, it waits for ready, and the time counts
   * that wait). Rejects as `request` does. The client answers the server's
   * `@ping` by itself.
   */
  async ping({ timeout = this.options.requestTimeout } = {}) {
    const started = performance.now();
    await this.request(PING, null, { timeout });
    return performance.now() - started;
  }

  /** Whether the current connection speaks `emitws.v2` (binary envelopes, PROTOCOL.md §10). */
  get binary() {
    return this._socket?.protocol === PROTOCOL_V2;
  }

  /** Whether a socket is open now (ready or still authenticating). */
  get connected() {
    return this._socket !== null && this._socket.readyState === 1;
  }

  /**
   * Sends an event. Before READY it waits in a queue of at most `maxQueued`
   * envelopes; throws `EmitError` `offline` (gave up), `closed`, or
   * `disconnected` (queue full).
   */
  emit(event, data) {
    const envelope = isBytes(data) ? { binary: [EVENT, undefined, event, data] } : data === undefined ? [EVENT, event] : [EVENT, event, data];
    const refused = this._send(envelope);
    if (refused) throw refused;
  }

  /**
   * Sends a request (made before READY, it waits for READY) and resolves
   * with the reply's data, or rejects with an `EmitError`: the server's
   * error, `timeout` (counting the wait for READY), `disconnected` (the
   * connection dropped after it was sent), `offline`, `closed`.
   */
  request(event, data, { timeout = this.options.requestTimeout } = {}) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new EmitError('timeout', `no reply to ${event} within ${timeout} ms`));
      }, timeout);
      this._pending.set(id, { resolve, reject, timer, sent: false });
      const envelope = isBytes(data)
        ? { binary: [REQUEST, id, event, data] }
        : data === undefined ? [REQUEST, id, event] : [REQUEST, id, event, data];
      const refused = this._send(envelope, id);
      if (refused) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(refused);
      }
    });
  }

  /**
   * Listens to an event, or a system event: `@status` (`{status, previous}`),
   * `@connection` (`{reconnected}`: a socket opened), `@ready` (the server's
   * welcome `{socket, user}`: admitted), `@reconnect` (a reconnection is
   * READY), `@resumed` (the reply to `@resume`, `{resumed, socket, rooms,
   * direct}`, before that connection's `@ready`), `@disconnect` (`{code, reason}`), `@reconnecting` (`{attempt,
   * delay_ms}`, before each attempt), `@reconnect_failed` (`{attempts,
   * reason}`: gave up, now offline), `@jump` (`{url, by}`: moving to another
   * server at once, `by` `'jump'` or `'drain'`), `@error` (`{code,
   * message}`), `@any`.
   */
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

  /** Removes the procedure for `name`: the server's requests for it then get `not_registered`. */
  unregister(name) {
    this._procedures.delete(name);
    return this;
  }

  /** A view whose event names start with `prefix` (`client.ns('/chat').emit('/say', x)` sends `/chat/say`). */
  ns(prefix) {
    return new Namespace(this, prefix);
  }

  /** Closes for good (offline): no reconnect; pending and later requests fail with `closed`. */
  close(code = 1000, reason = '') {
    clearTimeout(this._timer);
    clearTimeout(this._readyTimer);
    this._offline = new EmitError('closed', 'closed by the client');
    this.#resumeToken = null;
    this._failAll(this._offline);
    const socket = this._socket;
    this._socket = null;
    // CLOSING until the close handshake is over (or the socket gives up):
    // the socket's own close handler (see `_open`) ends it.
    if (socket?.readyState === 1) this._closing = socket;
    socket?.close(code, reason);
    this._settleFirst(new EmitError('closed', 'closed before it was ready'));
    this._setStatus(Status.OFFLINE);
  }

  /**
   * Moves to the server at `url` (WSE's jump): the current connection closes
   * (4001, moving: the server keeps the session, which the client resumes
   * at `url`), requests sent on it fail with `disconnected`, and the client
   * connects to `url` at once, with an `@jump` event (`{url, by: 'jump'}`),
   * keeping its listeners, procedures and queued envelopes; `url` is then
   * the one every reconnect uses. An idle client only changes its URL.
   * Throws `EmitError` `bad_request` for a URL that is not `ws://` or
   * `wss://`, and `closed` or `offline` once the client is offline.
   */
  jump(url) {
    if (this._offline) throw this._offline;
    if (!isWebSocketUrl(url)) throw new EmitError('bad_request', `not a WebSocket URL: ${url}`);
    this.url = url;
    if (this._status !== Status.IDLE) this._jumpNow('jump');
    return this;
  }

  /** Leaves the current socket (if any) and connects to `this.url` at once. */
  _jumpNow(by) {
    clearTimeout(this._timer);
    clearTimeout(this._readyTimer);
    const socket = this._socket;
    // Its close event, when it comes, is the old server's: ignored.
    this._socket = null;
    if (socket) {
      const wasOpen = socket.readyState === 1;
      this._authId = null;
      this._resumeId = null;
      this._welcome = null;
      socket.close(CLOSE_MOVING, 'jump');
      if (wasOpen) {
        this._failSent(`connection closed (${CLOSE_MOVING} jump)`);
        this._dispatch('@disconnect', { code: CLOSE_MOVING, reason: 'jump' });
      }
    }
    this._attempt = 0;
    this._setStatus(Status.RECONNECTING);
    this._dispatch('@jump', { url: this.url, by });
    this._open();
  }

  _open() {
    const WebSocketImpl = this.options.WebSocket ?? globalThis.WebSocket;
    if (!WebSocketImpl) {
      throw new Error('no WebSocket: use Node 22+, Node 20 with --experimental-websocket, or pass options.WebSocket');
    }
    // With a token the server waits for the `@resume` request `onopen` sends.
    const token = this.#resumeToken;
    let socket;
    try {
      const protocols = this.options.binary ? [PROTOCOL_V2, PROTOCOL] : [PROTOCOL];
      const url = token ? resumeUrl(this.url) : this.url;
      socket = new WebSocketImpl(this.options.meta === undefined ? url : metaUrl(url, this.options.meta), protocols);
      // Binary envelopes arrive as ArrayBuffers (browsers, Node's WebSocket and `ws` alike).
      socket.binaryType = 'arraybuffer';
    } catch (error) {
      // A malformed URL: the same as a failed attempt.
      this._dispatch('@error', { code: 'connect_failed', message: String(error?.message ?? error) });
      this._retry(`cannot connect to ${this.url}: ${error?.message ?? error}`);
      return;
    }
    this._socket = socket;
    let opened = false;
    // Until READY: a socket that opens but is never admitted fails the attempt too.
    this._readyTimer = setTimeout(() => {
      if (opened) socket.close(CLOSE_TIMEOUT, 'no @ready within the connect timeout');
      else socket.close();
    }, this.options.connectTimeout);
    socket.onopen = () => {
      if (this._socket !== socket) return;
      opened = true;
      const reconnected = this._everOpened;
      this._everOpened = true;
      this._setStatus(Status.AUTHENTICATING);
      const { auth } = this.options;
      if (auth) {
        this._authId = this._nextId++;
        socket.send(JSON.stringify([REQUEST, this._authId, auth.event, auth.data ?? null]));
      }
      this._resumed = null;
      if (token) {
        // Right after the auth request, without waiting for `@ready`; the
        // connect timeout bounds the wait for its reply, which comes first.
        this._resumeId = this._nextId++;
        const rooms = Object.fromEntries(this._positions);
        socket.send(JSON.stringify([REQUEST, this._resumeId, '@resume', { token, rooms }]));
      } else {
        // A new session: the old one's positions mean nothing to it.
        this._positions.clear();
      }
      this._dispatch('@connection', { reconnected });
    };
    socket.onmessage = (message) => {
      if (this._socket === socket) this._receive(message.data);
    };
    const closed = ({ code, reason }) => {
      clearTimeout(this._readyTimer);
      // The socket `close()` left CLOSING is closed now.
      if (this._closing === socket) this._closing = null;
      if (this._socket !== socket) return;
      this._socket = null;
      this._authId = null;
      this._resumeId = null;
      this._welcome = null;
      // A close that ends the server's session leaves nothing to resume.
      if (!sessionKept(code)) this.#resumeToken = null;
      if (opened) {
        this._failSent(`connection closed (${code})`);
        this._dispatch('@disconnect', { code, reason });
      } else {
        this._dispatch('@error', { code: 'connect_failed', message: `cannot connect to ${this.url} (close ${code})` });
      }
      if (code === CLOSE_DRAIN && isWebSocketUrl(reason)) {
        // A drained server names the one to go to.
        this.url = reason;
        this._jumpNow('drain');
        return;
      }
      this._retry(`connection closed (${code}${reason ? ` ${reason}` : ''})`, refusesRetry(code));
    };
    socket.onclose = closed;
    // Browsers follow an error with a close event, which decides what happens
    // next; Node 20's WebSocket fires no close when it cannot connect at all.
    socket.onerror = () => {
      if (!opened) closed({ code: 1006, reason: '' });
    };
  }

  /**
   * The connection was lost or an attempt failed: schedule the next attempt,
   * or give up and go offline (at once when the server `refused`, PROTOCOL.md §6).
   */
  _retry(why, refused = false) {
    const { reconnect, maxRetries, reconnectDelay, maxReconnectDelay } = this.options;
    if (this._offline) return;
    if (refused || !reconnect || this._attempt >= maxRetries) {
      this._offline = new EmitError('offline', `gave up reconnecting (${why})`);
      const dropped = this._queue.filter((queued) => queued.id === undefined).length;
      this._failAll(this._offline);
      this._settleFirst(new EmitError('connect_failed', `cannot connect to ${this.url}: ${why}`));
      this._setStatus(Status.OFFLINE);
      if (dropped > 0) {
        const message = `${dropped} queued events dropped: gave up reconnecting (${why})`;
        this._dispatch('@error', { code: 'offline', message });
      }
      // Last: the event that says it is over.
      this._dispatch('@reconnect_failed', { attempts: this._attempt, reason: why });
      return;
    }
    // Exponential backoff with jitter, so that a restarted server is not hit by every client at once.
    const ceiling = Math.min(reconnectDelay * 2 ** Math.min(this._attempt, 16), maxReconnectDelay);
    const delay = Math.round(ceiling * (0.5 + Math.random() / 2));
    this._attempt += 1;
    this._setStatus(Status.RECONNECTING);
    this._dispatch('@reconnecting', { attempt: this._attempt, delay_ms: delay });
    this._timer = setTimeout(() => this._open(), delay);
  }

  /** The server admitted the socket: READY, the queue goes out, then the listeners run. The resume token is kept out of sight. */
  _ready(data) {
    const isObject = data !== null && typeof data === 'object' && !Array.isArray(data);
    const { resume: token, ...fields } = isObject ? data : {};
    const welcome = isObject ? fields : data;
    if (this._status !== Status.AUTHENTICATING) {
      this._dispatch('@ready', welcome);
      return;
    }
    // Admitted without an answer to `@resume` (its reply comes first): nothing of the old session is known to be back.
    if (this._resumeId !== null) this._resumeAnswered(notResumed(welcome?.socket ?? null));
    this.#resumeToken = typeof token === 'string' ? token : null;
    clearTimeout(this._readyTimer);
    this._attempt = 0;
    this._welcome = welcome;
    const reconnected = this._everReady;
    this._everReady = true;
    const queued = this._queue;
    this._queue = [];
    for (const { text, envelope, id } of queued) {
      if (id !== undefined && !this._pending.has(id)) continue; // Its caller stopped waiting (timeout).
      const frame = text ?? this._binaryFrame(envelope, id);
      if (frame === null) continue;
      this._markSent(id);
      this._socket.send(frame);
    }
    this._setStatus(Status.READY);
    this._dispatch('@ready', welcome);
    if (reconnected) this._dispatch('@reconnect', {});
    this._settleFirst(null);
  }

  /**
   * The outcome of `@resume` (the server's reply, or `notResumed`): the kept
   * positions follow it, then `@resumed` tells the application. Not resumed,
   * every position is forgotten; resumed, each room the reply positions
   * takes the stream's latest offset (never going back within an epoch),
   * and a room it does not position is forgotten.
   */
  _resumeAnswered(outcome) {
    this._resumeId = null;
    this._resumed = outcome;
    if (outcome?.resumed !== true) {
      this._positions.clear();
    } else {
      for (const [room, result] of Object.entries(outcome.rooms ?? {})) {
        const latest = position(result);
        const kept = this._positions.get(room);
        if (!latest) this._positions.delete(room);
        else if (kept?.epoch === latest.epoch) kept.offset = Math.max(kept.offset, latest.offset);
        else this._positions.set(room, latest);
      }
    }
    this._dispatch('@resumed', outcome);
  }

  /**
   * Whether a delivery is new, given its fourth element `{room, offset,
   * epoch}` (PROTOCOL.md §13): one of the kept epoch at or below the kept
   * offset is a duplicate (a replay overlapping what came); any other moves
   * the room's position to its own. Without a well-formed element it is new.
   */
  _fresh(meta) {
    const at = position(meta);
    if (!at || typeof meta.room !== 'string') return true;
    const kept = this._positions.get(meta.room);
    if (kept?.epoch === at.epoch && at.offset <= kept.offset) return false;
    this._positions.set(meta.room, at);
    return true;
  }

  /** A request (`id` defined) now awaits its reply on the current connection. */
  _markSent(id) {
    const pending = id === undefined ? undefined : this._pending.get(id);
    if (pending) pending.sent = true;
  }

  /** Sends if READY, else queues; `id` is a request's. Returns the `EmitError` if refused. */
  _send(envelope, id) {
    if (this._offline) return this._offline;
    if (envelope.binary && !this.options.binary) {
      return new EmitError('bad_request', 'bytes need emitws.v2: create the client with the option binary: true');
    }
    if (envelope.binary) {
      // The name is checked now; the frame is made once READY, when the subprotocol is known.
      try {
        encodeBinary(EVENT, undefined, envelope.binary[2], new Uint8Array(0));
      } catch (error) {
        return error;
      }
    }
    const text = envelope.binary ? undefined : JSON.stringify(envelope);
    if (this._status === Status.READY && this.connected) {
      const frame = text ?? this._binaryFrame(envelope, id);
      if (frame === null) return null;
      this._socket.send(frame);
      this._markSent(id);
    } else if (this._queue.length < this.options.maxQueued) {
      this._queue.push({ text, envelope, id });
    } else {
      return new EmitError('disconnected', `not ready, and the send queue (maxQueued ${this.options.maxQueued}) is full`);
    }
    return null;
  }

  /**
   * The binary envelope `{binary: [type, id, name, bytes]}` stands for, or
   * null when the server did not select `emitws.v2` (the request, if any,
   * is then failed with `bad_request`; an event is reported as `@error`).
   */
  _binaryFrame(envelope, id) {
    const [type, , name, bytes] = envelope.binary;
    if (this.binary) return encodeBinary(type, id, name, bytes);
    const error = new EmitError('bad_request', `the server did not select ${PROTOCOL_V2}: ${name} cannot send bytes`);
    const pending = id === undefined ? undefined : this._pending.get(id);
    if (pending) {
      clearTimeout(pending.timer);
      this._pending.delete(id);
      pending.reject(error);
    } else {
      this._dispatch('@error', { code: error.code, message: error.message });
    }
    return null;
  }

  /** A reply to the server's call, sent whatever the status (a `@challenge` answer comes before READY). */
  _reply(envelope) {
    if (!this.connected) return;
    const [type, id, result] = envelope;
    if (type === REPLY && isBytes(result) && this.binary) this._socket.send(encodeBinary(REPLY, id, undefined, result));
    else this._socket.send(JSON.stringify(envelope));
  }

  _setStatus(status) {
    const previous = this._status;
    if (previous === status) return;
    this._status = status;
    this._dispatch('@status', { status, previous });
  }

  /** Settles the promise of `open()`: `null` for READY, else the error. */
  _settleFirst(error) {
    const first = this._firstReady;
    if (!first) return;
    this._firstReady = null;
    if (error) first.reject(error);
    else first.resolve();
  }

  _receive(text) {
    if (typeof text !== 'string') {
      this._receiveBinary(text);
      return;
    }
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
        if (a === '@ready') this._ready(b ?? null);
        else if (typeof a === 'string' && (envelope.length < 4 || this._fresh(c))) this._dispatch(a, b ?? null);
        break;
      case REQUEST:
        this._answer(a, b, c ?? null);
        break;
      case REPLY:
      case ERROR: {
        if (a === this._resumeId && a !== null) {
          if (type === ERROR) {
            const message = `the resume request was refused: ${b?.message ?? ''}`;
            this._dispatch('@error', { code: b?.code ?? 'internal', message });
          }
          this._resumeAnswered(type === REPLY && b !== null && typeof b === 'object' ? b : notResumed(null));
          return;
        }
        if (a === this._authId && a !== null) {
          this._authId = null;
          if (type === ERROR) {
            const message = `the auth request was refused: ${b?.message ?? ''}`;
            this._dispatch('@error', { code: b?.code ?? 'internal', message });
          }
          return;
        }
        this._settle(type, a, b ?? null);
        break;
      }
      default:
        break; // Types from later versions are ignored.
    }
  }

  /** Settles the pending request `id` with a reply's data or an error reply's body. */
  _settle(type, id, data) {
    const pending = this._pending.get(id);
    if (!pending) return;
    this._pending.delete(id);
    clearTimeout(pending.timer);
    if (type === REPLY) pending.resolve(data);
    else pending.reject(new EmitError(data?.code ?? 'internal', data?.message));
  }

  /** A binary envelope (PROTOCOL.md §10): payloads are Uint8Arrays; a malformed one is reported, never answered. */
  _receiveBinary(frame) {
    const envelope = isBytes(frame) ? decodeBinary(frame) : null;
    if (envelope === null) {
      this._dispatch('@error', { code: 'bad_request', message: 'the server sent a malformed binary envelope' });
      return;
    }
    const { type, id, name, payload } = envelope;
    switch (type) {
      case EVENT:
        this._dispatch(name, payload);
        break;
      case EVENT_AT:
        // A broadcast of a room with history: its position is tracked as a JSON event's fourth element.
        if (this._fresh(envelope.position)) this._dispatch(name, payload);
        break;
      case REQUEST:
        this._answer(id, name, payload);
        break;
      case REPLY:
        this._settle(REPLY, id, payload);
        break;
      case ERROR: {
        let body = null;
        try {
          body = JSON.parse(new TextDecoder().decode(payload));
        } catch {
          // A body that is not JSON fails the request all the same (PROTOCOL.md §2).
        }
        this._settle(ERROR, id, body);
        break;
      }
      default:
        break; // Types from later versions are ignored.
    }
  }

  async _answer(id, name, data) {
    if (name === PING) {
      // The server measures a round trip: answered at once, with its data.
      this._reply([REPLY, id, data]);
      return;
    }
    const procedure = this._procedures.get(name);
    if (!procedure) {
      this._reply([ERROR, id, { code: 'not_registered', message: `no procedure ${name}` }]);
      return;
    }
    try {
      const result = await procedure(data);
      this._reply([REPLY, id, result === undefined ? null : result]);
    } catch (error) {
      this._reply([ERROR, id, { code: 'execution_failed', message: String(error?.message ?? error) }]);
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

  /** Fails the requests sent on the connection that ended (queued ones keep waiting for READY). */
  _failSent(why) {
    for (const [id, pending] of this._pending) {
      if (!pending.sent) continue;
      clearTimeout(pending.timer);
      pending.reject(new EmitError('disconnected', why));
      this._pending.delete(id);
    }
  }

  /** Fails every request and drops the queue: the client is offline. */
  _failAll(error) {
    for (const pending of this._pending.values()) {
      clearTimeout(pending.timer);
      pending.reject(error);
    }
    this._pending.clear();
    this._queue = [];
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

  unregister(name) {
    this.client.unregister(this.prefix + name);
    return this;
  }

  ns(prefix) {
    return new Namespace(this.client, this.prefix + prefix);
  }
}
