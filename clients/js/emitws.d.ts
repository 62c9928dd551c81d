// Type declarations for emitws.js (the emitws.v1 event protocol client).

export declare const PROTOCOL: 'emitws.v1';
/** The subprotocol with binary envelopes (PROTOCOL.md §10), offered with the `binary` option. */
export declare const PROTOCOL_V2: 'emitws.v2';

/** Bytes sent as a binary envelope (emitws.v2): binary events and replies arrive as `Uint8Array`. */
export type Bytes = ArrayBuffer | ArrayBufferView;

/** A failed request: `code` is the machine-readable part (PROTOCOL.md §4). */
export declare class EmitError extends Error {
  constructor(code: string, message?: string);
  readonly code: string;
}

/** Where a client is; each change is an `@status` event. */
export type Status = 'idle' | 'connecting' | 'authenticating' | 'ready' | 'reconnecting' | 'offline';
export declare const Status: {
  readonly IDLE: 'idle';
  readonly CONNECTING: 'connecting';
  readonly AUTHENTICATING: 'authenticating';
  readonly READY: 'ready';
  readonly RECONNECTING: 'reconnecting';
  readonly OFFLINE: 'offline';
};

export interface ConnectOptions {
  /** Reconnect after the connection drops (default true). */
  reconnect?: boolean;
  /** First reconnect delay in ms, doubled per attempt, jittered down by up to half (default 500). */
  reconnectDelay?: number;
  /** The longest reconnect delay in ms (default 30000). */
  maxReconnectDelay?: number;
  /** Reconnect attempts before giving up and going offline (default Infinity). */
  maxRetries?: number;
  /** Time allowed for a connection attempt until the server's `@ready`, in ms (default 10000). */
  connectTimeout?: number;
  /** Default request timeout, in ms (default 10000). */
  requestTimeout?: number;
  /** Envelopes kept while not ready (default 1000). */
  maxQueued?: number;
  /** First-message auth: a request sent first on every connection. */
  auth?: { event: string; data?: unknown };
  /** A JSON value sent with every connection as `emitws_meta` (PROTOCOL.md §14): the server's `req.meta()`. */
  meta?: unknown;
  /** Procedures registered before connecting (such as `@challenge`). */
  procedures?: Record<string, Procedure>;
  /** A WebSocket constructor, when there is no global one (e.g. the `ws` package). */
  WebSocket?: unknown;
  /**
   * Offer `emitws.v2` before `emitws.v1` (default false): `Bytes` given to `emit`, `request` or returned by a
   * procedure travel as binary envelopes, and binary events and replies arrive as `Uint8Array` (PROTOCOL.md §10).
   * Bytes sent on a connection where the server chose `emitws.v1` fail with `bad_request`.
   */
  binary?: boolean;
}

export interface RequestOptions {
  /** Time to wait for the reply, in ms. */
  timeout?: number;
}

/** Where a room's stream stands: its epoch and an offset in it (PROTOCOL.md §13). */
export interface RoomPosition {
  epoch: string;
  offset: number;
}

/** The reply to `@resume` (PROTOCOL.md §13), the data of the local `@resumed` event. */
export interface ResumeOutcome {
  /** Whether the session was found and restored; `false`: a new socket, rebuild as after a first connect. */
  resumed: boolean;
  /** The socket's id (the old one when resumed). */
  socket: string | null;
  /** Per room: whether every broadcast missed was replayed, with the stream's epoch and latest offset. */
  rooms: Record<string, { recovered: boolean } & Partial<RoomPosition>>;
  /** `recovered: false` when direct messages sent while away were lost (over the server's cap). */
  direct: { recovered: boolean };
}

export type Listener = (data: any) => void;
export type AnyListener = (event: string, data: any) => void;
export type Procedure = (data: any) => unknown | Promise<unknown>;

/** The WebSocket API's `readyState` numbers (PROTOCOL.md §1). */
export declare const ReadyState: Readonly<{ CONNECTING: 0; OPEN: 1; CLOSING: 2; CLOSED: 3 }>;
export type ReadyStateNumber = 0 | 1 | 2 | 3;

export declare class EmitClient {
  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  /** Connects; resolves once the first connection is ready (the server sent `@ready`). */
  static connect(url: string, options?: ConnectOptions): Promise<EmitClient>;
  /** A client in status `idle`: nothing is sent until `open()`. */
  constructor(url: string, options?: ConnectOptions);
  /** Starts connecting; resolves once ready, rejects with `connect_failed` (or `closed`). */
  open(): Promise<EmitClient>;
  readonly url: string;
  /** Where the client is now. */
  readonly status: Status;
  /** The data of the current connection's `@ready` (the resume token left out), `null` while not ready. */
  readonly welcome: { socket: string; user: string | null; [field: string]: unknown } | null;
  /** The socket's id from the current connection's `@ready` (the same after a resume), `null` while not ready. */
  readonly socketId: string | null;
  /**
   * After a resume, whether every broadcast `room` had while the client was away was replayed: `false` means
   * refetch the room (session not resumed, epoch changed, history too short, no history). `null` when the
   * current connection did not resume, or its resume is not answered yet.
   */
  recovered(room: string): boolean | null;
  /** Whether a socket is open now (ready or still authenticating). */
  readonly connected: boolean;
  /**
   * `CONNECTING` (0) while connecting, authenticating or reconnecting, `OPEN` (1) when ready, `CLOSING` (2) from
   * `close()` until the socket has closed, `CLOSED` (3) when idle or offline.
   */
  readonly readyState: ReadyStateNumber;
  /** Round trip to the server in ms: the `@ping` request, answered by the server itself (PROTOCOL.md §9.1). */
  ping(options?: RequestOptions): Promise<number>;
  /** Whether the current connection speaks `emitws.v2` (binary envelopes). */
  readonly binary: boolean;
  /**
   * Sends (or, before ready, queues) an event — a binary one when `data` is `Bytes` (option `binary`); throws
   * `EmitError` `offline`, `closed`, `disconnected` (queue full) or `bad_request` (bytes without `binary`).
   */
  emit(event: string, data?: unknown): void;
  request<T = any>(event: string, data?: unknown, options?: RequestOptions): Promise<T>;
  on(event: '@any', listener: AnyListener): this;
  on(event: '@status', listener: (change: { status: Status; previous: Status }) => void): this;
  on(event: '@connection', listener: (info: { reconnected: boolean }) => void): this;
  on(event: '@ready', listener: (welcome: { socket: string; user: string | null }) => void): this;
  on(event: '@disconnect', listener: (info: { code: number; reason: string }) => void): this;
  on(event: '@reconnecting', listener: (info: { attempt: number; delay_ms: number }) => void): this;
  on(event: '@resumed', listener: (outcome: ResumeOutcome) => void): this;
  on(event: '@reconnect_failed', listener: (info: { attempts: number; reason: string }) => void): this;
  on(event: '@jump', listener: (info: { url: string; by: 'jump' | 'drain' }) => void): this;
  on(event: '@error', listener: (error: { code: string; message: string }) => void): this;
  on(event: string, listener: Listener): this;
  off(event: string, listener?: Listener | AnyListener): this;
  register(name: string, procedure: Procedure): this;
  /** Removes the procedure for `name`: the server's requests for it then get `not_registered`. */
  unregister(name: string): this;
  ns(prefix: string): Namespace;
  /** Closes for good (offline); pending and later requests fail with `closed`. */
  close(code?: number, reason?: string): void;
  /**
   * Moves to the server at `url` at once (an `@jump` event), keeping listeners, procedures and queued
   * envelopes; throws `EmitError` `bad_request` for a URL that is not `ws://` or `wss://`, `closed` or `offline`.
   */
  jump(url: string): this;
}

/** Event names under a prefix (`client.ns('/chat')`); nestable. */
export declare class Namespace {
  readonly client: EmitClient;
  readonly prefix: string;
  emit(event: string, data?: unknown): void;
  request<T = any>(event: string, data?: unknown, options?: RequestOptions): Promise<T>;
  on(event: string, listener: Listener): this;
  off(event: string, listener?: Listener): this;
  register(name: string, procedure: Procedure): this;
  /** Removes the procedure for `name`: the server's requests for it then get `not_registered`. */
  unregister(name: string): this;
  ns(prefix: string): Namespace;
}
