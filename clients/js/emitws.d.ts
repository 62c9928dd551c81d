// Type declarations for emitws.js (the emitws.v1 event protocol client).

export declare const PROTOCOL: 'emitws.v1';

/** A failed request: `code` is the machine-readable part (PROTOCOL.md §4). */
export declare class EmitError extends Error {
  constructor(code: string, message?: string);
  readonly code: string;
}

export interface ConnectOptions {
  /** Reconnect after the connection drops (default true). */
  reconnect?: boolean;
  /** First reconnect delay in ms, doubled per attempt with jitter, at most 30 s (default 500). */
  reconnectDelay?: number;
  /** Reconnect attempts before giving up (default Infinity). */
  maxRetries?: number;
  /** Time allowed to open a connection, in ms (default 10000). */
  connectTimeout?: number;
  /** Default request timeout, in ms (default 10000). */
  requestTimeout?: number;
  /** A WebSocket constructor, when there is no global one (e.g. the `ws` package). */
  WebSocket?: unknown;
}

export interface RequestOptions {
  /** Time to wait for the reply, in ms. */
  timeout?: number;
}

export type Listener = (data: any) => void;
export type AnyListener = (event: string, data: any) => void;
export type Procedure = (data: any) => unknown | Promise<unknown>;

export declare class EmitClient {
  /** Connects; resolves once the first connection is open. */
  static connect(url: string, options?: ConnectOptions): Promise<EmitClient>;
  readonly url: string;
  /** Whether a connection is open now. */
  readonly connected: boolean;
  emit(event: string, data?: unknown): void;
  request<T = any>(event: string, data?: unknown, options?: RequestOptions): Promise<T>;
  on(event: '@any', listener: AnyListener): this;
  on(event: '@connection', listener: (info: { reconnected: boolean }) => void): this;
  on(event: '@disconnect', listener: (info: { code: number; reason: string }) => void): this;
  on(event: '@error', listener: (error: { code: string; message: string }) => void): this;
  on(event: string, listener: Listener): this;
  off(event: string, listener?: Listener | AnyListener): this;
  register(name: string, procedure: Procedure): this;
  ns(prefix: string): Namespace;
  /** Closes for good; pending requests fail with `disconnected`. */
  close(code?: number, reason?: string): void;
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
  ns(prefix: string): Namespace;
}
