// The client's side of PROTOCOL.md against a scripted socket (no network):
// envelopes out, envelopes in, timeouts, RPC, namespaces and reconnects.
// test/server.test.js drives it against a real emitws server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EmitClient, EmitError } from '../emitws.js';

/** A WebSocket stand-in: records what is sent and lets the test play the server, which admits every socket at once. */
class ScriptedSocket {
  static instances = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    ScriptedSocket.instances.push(this);
    queueMicrotask(() => this.open());
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
    this.serverSends([0, '@ready', { socket: '0-1', user: null }]);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  serverSends(envelope) {
    this.onmessage?.({ data: JSON.stringify(envelope) });
  }
  close(code = 1000, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

const connect = (options = {}) =>
  EmitClient.connect('ws://test/', { WebSocket: ScriptedSocket, reconnectDelay: 1, ...options });
const last = () => ScriptedSocket.instances.at(-1);
const tick = () => new Promise((resolve) => setTimeout(resolve, 5));

test('offers the subprotocol and sends events and requests as arrays', async () => {
  const client = await connect();
  assert.deepEqual(last().protocols, ['emitws.v1']);
  client.emit('/chat/say', { text: 'hi' });
  client.emit('/bare');
  const reply = client.request('/sum', [1, 2]);
  assert.deepEqual(last().sent, [[0, '/chat/say', { text: 'hi' }], [0, '/bare'], [1, 1, '/sum', [1, 2]]]);
  last().serverSends([2, 1, 3]);
  assert.equal(await reply, 3);
  client.close();
});

test('error replies and timeouts reject with EmitError', async () => {
  const client = await connect();
  const failing = client.request('/nothing');
  last().serverSends([3, 1, { code: 'no_handler', message: 'no handler for /nothing' }]);
  await assert.rejects(failing, (e) => e instanceof EmitError && e.code === 'no_handler');
  await assert.rejects(client.request('/slow', null, { timeout: 10 }), (e) => e.code === 'timeout');
  client.close();
});

test('events reach listeners, unheard ones reach @any, off removes', async () => {
  const client = await connect();
  const heard = [];
  const listener = (data) => heard.push(['news', data]);
  client.on('/news', listener);
  client.on('@any', (event, data) => heard.push(['any', event, data]));
  last().serverSends([0, '/news', 1]);
  last().serverSends([0, '/other', 2]);
  client.off('/news', listener);
  last().serverSends([0, '/news']);
  assert.deepEqual(heard, [['news', 1], ['any', '/other', 2], ['any', '/news', null]]);
  client.close();
});

test('registered procedures answer server requests', async () => {
  const client = await connect();
  client.register('/double', (n) => n * 2);
  client.register('/async', async () => 'later');
  client.register('/broken', () => {
    throw new Error('nope');
  });
  for (const [id, name, data] of [[7, '/double', 21], [8, '/async', null], [9, '/broken', null], [10, '/missing', 1]]) {
    last().serverSends([1, id, name, data]);
  }
  await tick();
  // Procedures may finish in any order; each answer carries its id.
  assert.deepEqual(last().sent.sort((a, b) => a[1] - b[1]), [
    [2, 7, 42],
    [2, 8, 'later'],
    [3, 9, { code: 'execution_failed', message: 'nope' }],
    [3, 10, { code: 'not_registered', message: 'no procedure /missing' }],
  ]);
  client.close();
});

test('namespaces prefix event names and nest', async () => {
  const client = await connect();
  const lobby = client.ns('/game').ns('/lobby');
  lobby.emit('/join', 'ann');
  const got = [];
  lobby.on('/joined', (who) => got.push(who));
  last().serverSends([0, '/game/lobby/joined', 'ann']);
  assert.deepEqual(last().sent, [[0, '/game/lobby/join', 'ann']]);
  assert.deepEqual(got, ['ann']);
  client.close();
});

test('a dropped connection fails pending requests, queues new envelopes and reconnects', async () => {
  const client = await connect();
  const events = [];
  for (const name of ['@connection', '@disconnect', '@reconnect']) client.on(name, (info) => events.push([name, info]));
  const pending = client.request('/wait');
  const first = last();
  first.close(1006);
  await assert.rejects(pending, (e) => e.code === 'disconnected');
  assert.equal(client.connected, false);
  client.emit('/while-away', 1);
  await tick();
  assert.notEqual(last(), first);
  assert.equal(client.connected, true);
  assert.deepEqual(last().sent, [[0, '/while-away', 1]]);
  assert.deepEqual(events, [
    ['@disconnect', { code: 1006, reason: '' }],
    ['@connection', { reconnected: true }],
    ['@reconnect', {}],
  ]);
  assert.equal(client.status, 'ready');
  client.close();
});

test('close stops reconnecting; a first connection that fails rejects connect', async () => {
  const client = await connect();
  const count = ScriptedSocket.instances.length;
  client.close();
  await tick();
  assert.equal(ScriptedSocket.instances.length, count);

  class Refused extends ScriptedSocket {
    open() {
      this.close(1006);
    }
  }
  await assert.rejects(
    EmitClient.connect('ws://test/', { WebSocket: Refused, reconnectDelay: 1, maxRetries: 2 }),
    (e) => e.code === 'connect_failed',
  );
});

test('status goes idle, connecting, authenticating, ready; envelopes wait for ready', async () => {
  class Unready extends ScriptedSocket {
    open() {
      this.readyState = 1;
      this.onopen?.();
    }
  }
  const client = new EmitClient('ws://test/', { WebSocket: Unready, reconnectDelay: 1, auth: { event: '/auth', data: 't' } });
  const statuses = [];
  client.on('@status', ({ status, previous }) => statuses.push([previous, status]));
  assert.equal(client.status, 'idle');
  client.emit('/early', 1);
  const early = client.request('/sum', [1, 2]);
  const opened = client.open();
  await tick();
  assert.equal(client.status, 'authenticating');
  // Only the auth request went out; the rest waits for @ready.
  assert.deepEqual(last().sent, [[1, 2, '/auth', 't']]);
  last().serverSends([2, 2, { user: 'ann' }]);
  last().serverSends([0, '@ready', { socket: '0-9', user: 'ann' }]);
  assert.equal(await opened, client);
  assert.equal(client.status, 'ready');
  assert.deepEqual(client.welcome, { socket: '0-9', user: 'ann' });
  assert.deepEqual(last().sent.slice(1), [[0, '/early', 1], [1, 1, '/sum', [1, 2]]]);
  last().serverSends([2, 1, 3]);
  assert.equal(await early, 3);
  assert.deepEqual(statuses, [['idle', 'connecting'], ['connecting', 'authenticating'], ['authenticating', 'ready']]);
  client.close();
  assert.equal(client.status, 'offline');
  assert.throws(() => client.emit('/late'), (e) => e instanceof EmitError && e.code === 'closed');
  await assert.rejects(client.request('/late'), { code: 'closed' });
});

test('procedures given as options answer a challenge before ready', async () => {
  class Challenging extends ScriptedSocket {
    open() {
      this.readyState = 1;
      this.onopen?.();
      this.serverSends([1, 1, '@challenge', { challenge: 'abc' }]);
    }
  }
  const procedures = { '@challenge': ({ challenge }) => [...challenge].reverse().join('') };
  const opened = EmitClient.connect('ws://test/', { WebSocket: Challenging, procedures });
  await tick();
  assert.deepEqual(last().sent, [[2, 1, 'cba']]);
  last().serverSends([0, '@ready', { socket: '0-2', user: 'cba' }]);
  const client = await opened;
  assert.equal(client.status, 'ready');
  client.close();
});

test('a socket never admitted fails the attempt after connectTimeout', async () => {
  class Unready extends ScriptedSocket {
    open() {
      this.readyState = 1;
      this.onopen?.();
    }
  }
  const client = new EmitClient('ws://test/', { WebSocket: Unready, reconnect: false, connectTimeout: 20 });
  const closes = [];
  client.on('@disconnect', (info) => closes.push(info));
  await assert.rejects(client.open(), { code: 'connect_failed' });
  assert.deepEqual(closes, [{ code: 4408, reason: 'no @ready within the connect timeout' }]);
  assert.equal(client.status, 'offline');
});

test('giving up is announced, goes offline and fails queued and new envelopes at once', async () => {
  class Refused extends ScriptedSocket {
    open() {
      this.close(1006);
    }
  }
  let socketClass = ScriptedSocket;
  const client = await EmitClient.connect('ws://test/', {
    WebSocket: class extends ScriptedSocket {
      constructor(url, protocols) {
        super(url, protocols);
        if (socketClass === Refused) this.open = Refused.prototype.open;
      }
    },
    reconnectDelay: 1,
    maxRetries: 2,
  });
  const events = [];
  for (const name of ['@reconnecting', '@reconnect_failed', '@error']) client.on(name, (data) => events.push([name, data]));
  socketClass = Refused;
  last().close(1006);
  client.emit('/queued', 1);
  const queued = client.request('/queued');
  await assert.rejects(queued, (e) => e.code === 'offline');
  assert.equal(client.status, 'offline');
  assert.throws(() => client.emit('/late'), { code: 'offline' });
  await assert.rejects(client.request('/late'), { code: 'offline' });
  const names = events.map(([name, data]) => (name === '@error' ? data.code : name));
  assert.deepEqual(names, ['@reconnecting', 'connect_failed', '@reconnecting', 'connect_failed', 'offline', '@reconnect_failed']);
  assert.deepEqual(events.filter(([name]) => name === '@reconnecting').map(([, data]) => data.attempt), [1, 2]);
  assert.ok(events.every(([name, data]) => name !== '@reconnecting' || data.delay_ms >= 0));
  assert.equal(events[5][1].attempts, 2);
});

test('the queue is capped by maxQueued', async () => {
  const client = new EmitClient('ws://test/', { WebSocket: ScriptedSocket, maxQueued: 2 });
  client.emit('/a');
  client.emit('/b');
  assert.throws(() => client.emit('/c'), { code: 'disconnected' });
  await client.open();
  assert.deepEqual(last().sent, [[0, '/a'], [0, '/b']]);
  client.close();
});

test('jump moves to another server at once, keeping listeners, procedures and the queue', async () => {
  const client = await connect();
  const first = last();
  const seen = [];
  client.on('@jump', (info) => seen.push(['jump', info]));
  client.on('@disconnect', (info) => seen.push(['disconnect', info]));
  client.on('/news', (data) => seen.push(['news', data]));
  client.register('/double', (n) => n * 2);
  const lost = client.request('/slow');
  assert.throws(() => client.jump('http://elsewhere/'), (e) => e instanceof EmitError && e.code === 'bad_request');
  client.jump('ws://other/');
  await assert.rejects(lost, { code: 'disconnected' });
  assert.equal(first.readyState, 3);
  assert.equal(client.url, 'ws://other/');
  // Queued while it moves, sent once ready on the new server.
  client.emit('/hello', 1);
  await tick();
  const second = last();
  assert.notEqual(second, first);
  assert.equal(second.url, 'ws://other/');
  assert.equal(client.status, 'ready');
  assert.deepEqual(second.sent, [[0, '/hello', 1]]);
  second.serverSends([0, '/news', 'still heard']);
  second.serverSends([1, 9, '/double', 4]);
  await tick();
  assert.deepEqual(second.sent.at(-1), [2, 9, 8]);
  assert.deepEqual(seen, [
    ['disconnect', { code: 4001, reason: 'jump' }],
    ['jump', { url: 'ws://other/', by: 'jump' }],
    ['news', 'still heard'],
  ]);
  client.close();
  assert.throws(() => client.jump('ws://third/'), { code: 'closed' });
});

test('a 1012 close with a URL moves there at once; without one, the usual reconnect', async () => {
  const client = await connect({ reconnectDelay: 1 });
  const jumps = [];
  const reconnects = [];
  client.on('@jump', (info) => jumps.push(info));
  client.on('@reconnecting', (info) => reconnects.push(info));
  last().close(1012, 'ws://next-node/');
  await tick();
  assert.equal(last().url, 'ws://next-node/');
  assert.equal(client.status, 'ready');
  assert.deepEqual(jumps, [{ url: 'ws://next-node/', by: 'drain' }]);
  assert.deepEqual(reconnects, []);
  last().close(1012, '');
  await tick();
  assert.equal(last().url, 'ws://next-node/');
  assert.equal(client.status, 'ready');
  assert.equal(jumps.length, 1);
  assert.equal(reconnects.length, 1);
  client.close();
});

test('close() leaves the client CLOSING until its socket has closed, then CLOSED', async () => {
  const client = await connect();
  const socket = last();
  // A socket whose close handshake takes a while, as a real one's does.
  let handshakeOver;
  socket.close = (code, reason) => {
    socket.readyState = 2;
    handshakeOver = () => {
      socket.readyState = 3;
      socket.onclose?.({ code, reason });
    };
  };
  client.close();
  assert.equal(client.readyState, EmitClient.CLOSING);
  assert.equal(client.status, 'offline');
  handshakeOver();
  assert.equal(client.readyState, EmitClient.CLOSED);
});
