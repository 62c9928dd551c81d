// The client resumes its session by itself (PROTOCOL.md §13), against a
// scripted server (no network) that speaks the server's side: `@ready` with
// a resume token, room broadcasts with their {room, offset, epoch} element,
// and `@resume` answered with a replay from the client's offset (optionally
// overlapping it), the reply, then `@ready`. tests/client_resume.rs runs it;
// test/resume-server.test.js does the same against a real server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EmitClient } from '../emitws.js';

const ROOM = '#lobby';

/** The server's side of §13 for one client; its sockets are made by `server.WebSocket`. */
class ScriptedServer {
  constructor({ overlap = 0, refuse = false, auth = false } = {}) {
    Object.assign(this, { overlap, refuse, auth });
    /** Every socket that opened, in order. */
    this.conns = [];
    this.epoch = 'e1';
    this.published = 0;
    this.tokens = 0;
    this.socket = 1;
    /** Refuses connections: the client stays away. */
    this.offline = false;
    const server = this;
    this.WebSocket = class extends ScriptedSocket {
      constructor(url, protocols) {
        super(url, protocols, server);
      }
    };
  }

  delivery(offset) {
    return [0, '/said', { n: offset }, { room: ROOM, offset, epoch: this.epoch }];
  }

  /** `@ready` with a new token. */
  ready(resumed) {
    this.tokens += 1;
    const welcome = { socket: `s-${this.socket}`, user: null, resume: `tok-${this.tokens}` };
    return [0, '@ready', resumed ? { ...welcome, resumed: true } : welcome];
  }

  current() {
    const socket = this.conns.at(-1);
    return socket?.readyState === 1 ? socket : null;
  }

  /** Broadcasts the next message to the room: to the client if it is connected, else only into the history. */
  publish() {
    this.published += 1;
    this.current()?.serverSends(this.delivery(this.published));
  }

  /** Refuses new connections and drops the current one with `code`. */
  cut(code, reason = '') {
    this.offline = true;
    this.current().close(code, reason);
  }

  receive(socket, [type, id, name, data]) {
    if (type !== 1) return;
    if (name === '/auth') {
      socket.serverSends([2, id, { user: 'ann' }]);
      if (!socket.resuming) socket.serverSends(this.ready(false));
    } else if (name === '@resume') {
      for (const envelope of this.resume(socket, id, data)) socket.serverSends(envelope);
    }
  }

  /** The answer to `@resume`, as §13 orders it: the replay, the reply, `@ready`. */
  resume(socket, id, { token, rooms }) {
    if (this.refuse || token !== `tok-${this.tokens}`) {
      this.socket += 1;
      const reply = { resumed: false, socket: `s-${this.socket}`, rooms: { [ROOM]: { recovered: false } }, direct: { recovered: false } };
      return [[2, id, reply], this.ready(false)];
    }
    const kept = rooms?.[ROOM];
    const from = kept?.epoch === this.epoch ? kept.offset : 0;
    for (let offset = Math.max(from - this.overlap, 0) + 1; offset <= this.published; offset += 1) socket.replayed.push(offset);
    const room = { recovered: true, epoch: this.epoch, offset: this.published };
    const reply = { resumed: true, socket: `s-${this.socket}`, rooms: { [ROOM]: room }, direct: { recovered: true } };
    return [...socket.replayed.map((offset) => this.delivery(offset)), [2, id, reply], this.ready(true)];
  }
}

/** A WebSocket stand-in connected to a ScriptedServer. */
class ScriptedSocket {
  constructor(url, protocols, server) {
    Object.assign(this, { url, protocols, server, readyState: 0, sent: [], replayed: [] });
    this.query = url.split('?')[1] ?? '';
    this.resuming = this.query.split('&').includes('emitws_resume=1');
    queueMicrotask(() => (server.offline ? this.close(1006) : this.open()));
  }

  open() {
    this.readyState = 1;
    this.server.conns.push(this);
    this.onopen?.();
    if (!this.resuming && !this.server.auth) this.serverSends(this.server.ready(false));
  }

  send(text) {
    const envelope = JSON.parse(text);
    this.sent.push(envelope);
    this.server.receive(this, envelope);
  }

  serverSends(envelope) {
    if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(envelope) });
  }

  close(code = 1000, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.closed = code;
    this.onclose?.({ code, reason });
  }
}

const EVENTS = ['/said', '@resumed', '@ready', '@reconnect', '@error'];

/** Connects a client to the scripted server, recording EVENTS in order. */
async function open(server, url = 'ws://test/', options = {}) {
  const client = new EmitClient(url, { WebSocket: server.WebSocket, reconnectDelay: 1, maxReconnectDelay: 5, ...options });
  const events = [];
  for (const name of EVENTS) client.on(name, (data) => events.push([name, data]));
  await client.open();
  return { client, events };
}

/** Waits (bounded) until `predicate()` holds. */
async function until(what, predicate) {
  const deadline = Date.now() + 3000;
  while (!predicate()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

const count = (events, name) => events.filter(([event]) => event === name).length;
const said = (events) => events.filter(([event]) => event === '/said').map(([, data]) => data.n);
const position = (events, name, n) => events.map(([event]) => event).reduce((found, event, i) => {
  if (event === name) found.push(i);
  return found;
}, [])[n - 1];

/** Takes the client through a loss and back: drops the connection, runs `away()`, then lets it reconnect. */
async function outage(server, events, code, away = () => {}) {
  const reconnects = count(events, '@reconnect');
  server.cut(code);
  away();
  server.offline = false;
  await until('the reconnect', () => count(events, '@reconnect') > reconnects);
}

/** The `@resume` request's data, checked to be the connection's first envelope after the auth request (if any). */
function resumeRequest(socket, afterAuth = false) {
  if (afterAuth) assert.equal(socket.sent[0][2], '/auth');
  const [type, id, name, data] = socket.sent[afterAuth ? 1 : 0];
  assert.deepEqual([type, name], [1, '@resume']);
  assert.ok(Number.isSafeInteger(id) && id > 0);
  return data;
}

test('a lost connection resumes with the token and offsets, keeping the app\'s query', async () => {
  const server = new ScriptedServer();
  const { client, events } = await open(server, 'ws://test/chat?room=a&t=x');
  assert.equal(client.socketId, 's-1');
  assert.deepEqual(client.welcome, { socket: 's-1', user: null }, 'the token is not shown');
  assert.deepEqual(events, [['@ready', { socket: 's-1', user: null }]]);
  assert.equal(client.recovered(ROOM), null, 'a first connection resumed nothing');
  for (let i = 0; i < 3; i += 1) server.publish();
  const inFlight = client.request('/never').catch((error) => error);

  await outage(server, events, 1001, () => {
    server.publish();
    server.publish();
  });
  assert.equal((await inFlight).code, 'disconnected', 'replies do not survive a resume');
  const seen = server.conns[1];
  assert.equal(seen.query, 'room=a&t=x&emitws_resume=1');
  assert.deepEqual(resumeRequest(seen), { token: 'tok-1', rooms: { [ROOM]: { epoch: 'e1', offset: 3 } } });
  assert.deepEqual(seen.replayed, [4, 5]);
  assert.deepEqual(said(events), [1, 2, 3, 4, 5]);
  const [, outcome] = events.find(([event]) => event === '@resumed');
  assert.equal(outcome.resumed, true);
  assert.deepEqual(outcome.rooms[ROOM], { recovered: true, epoch: 'e1', offset: 5 });
  assert.ok(position(events, '/said', 5) < position(events, '@resumed', 1), 'the replay comes before the reply');
  assert.ok(position(events, '@resumed', 1) < position(events, '@ready', 2), '@resumed before that connection\'s @ready');
  assert.ok(position(events, '@ready', 2) < position(events, '@reconnect', 1));
  assert.equal(client.recovered(ROOM), true);
  assert.equal(client.recovered('#elsewhere'), false);
  assert.equal(client.socketId, 's-1');
  client.close();
});

// The socket.io #5419 case: offline and online twice with nothing published
// in between; the second resume asks from where the first recovery got to,
// and nothing reaches the application twice, even from overlapping replays.
test('overlapping replays are dropped and a second resume starts where the first ended', async () => {
  const server = new ScriptedServer({ overlap: 2 });
  const { client, events } = await open(server);
  for (let i = 0; i < 3; i += 1) server.publish();
  await outage(server, events, 1006, () => {
    server.publish();
    server.publish();
  });
  assert.deepEqual(server.conns[1].replayed, [2, 3, 4, 5], 'the replay overlaps offsets 2 and 3');
  assert.deepEqual(said(events), [1, 2, 3, 4, 5]);

  await outage(server, events, 1012);
  const seen = server.conns[2];
  assert.deepEqual(resumeRequest(seen), { token: 'tok-2', rooms: { [ROOM]: { epoch: 'e1', offset: 5 } } });
  assert.deepEqual(seen.replayed, [4, 5], 'replayed again, overlapping');
  assert.deepEqual(said(events), [1, 2, 3, 4, 5], 'nothing twice');

  // The history was lost (a new epoch): its offsets start again, and are not duplicates.
  server.epoch = 'e2';
  server.published = 0;
  server.publish();
  assert.deepEqual(said(events), [1, 2, 3, 4, 5, 1]);
  await outage(server, events, 1001);
  assert.deepEqual(resumeRequest(server.conns[3]).rooms, { [ROOM]: { epoch: 'e2', offset: 1 } });
  assert.deepEqual(said(events), [1, 2, 3, 4, 5, 1]);
  client.close();
});

test('a refused resume forgets the offsets and tells the application', async () => {
  const server = new ScriptedServer({ refuse: true });
  const { client, events } = await open(server);
  server.publish();
  server.publish();
  await outage(server, events, 1001);
  assert.equal(resumeRequest(server.conns[1]).rooms[ROOM].offset, 2);
  const [, outcome] = events.find(([event]) => event === '@resumed');
  assert.equal(outcome.resumed, false);
  assert.equal(client.recovered(ROOM), false);
  assert.equal(client.socketId, 's-2', 'a new socket');

  // The next resume presents the new session's token, and no offsets.
  server.refuse = false;
  await outage(server, events, 1001);
  assert.deepEqual(resumeRequest(server.conns[2]), { token: 'tok-2', rooms: {} });
  assert.equal(client.recovered(ROOM), true);
  client.close();
});

test('closes that end the session are not resumed', async () => {
  const server = new ScriptedServer();
  // The application's close: no reconnect at all.
  const first = await open(server);
  first.client.close();
  assert.equal(server.conns[0].closed, 1000);
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(server.conns.length, 1, 'closed for good');

  // A close for bad input (1008) ends the session: the reconnect is a new socket.
  const { client, events } = await open(server, 'ws://test/?x=1');
  await outage(server, events, 1008);
  const seen = server.conns[2];
  assert.equal(seen.query, 'x=1');
  assert.deepEqual(seen.sent, [], 'no @resume');
  assert.equal(client.recovered(ROOM), null);
  assert.equal(count(events, '@resumed'), 0);
  client.close();
});

test('a drop, a refusal or a takeover is not retried', async () => {
  // PROTOCOL.md §6: every 4xxx close but 4408 and 4001 means "do not reconnect".
  const server = new ScriptedServer();
  for (const [n, code] of [4000, 4401, 4409, 4429, 4999].entries()) {
    const { client, events } = await open(server);
    let failed = null;
    client.on('@reconnect_failed', (data) => { failed = data; });
    server.cut(code);
    server.offline = false;
    await until(`giving up after ${code}`, () => failed !== null);
    assert.ok(failed.reason.includes(String(code)), JSON.stringify(failed));
    assert.equal(client.status, 'offline');
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(server.conns.length, n + 1, `${code}: no new connection`);
    assert.equal(count(events, '@reconnect'), 0);
  }
});

test('with first-message auth the resume request follows the auth request', async () => {
  const server = new ScriptedServer({ auth: true });
  const { client, events } = await open(server, 'ws://test/', { auth: { event: '/auth', data: { token: 't-ann' } } });
  server.publish();
  await outage(server, events, 4408);
  assert.deepEqual(resumeRequest(server.conns[1], true), { token: 'tok-1', rooms: { [ROOM]: { epoch: 'e1', offset: 1 } } });
  assert.equal(client.recovered(ROOM), true, JSON.stringify(events));
  client.close();
});

test('a drain\'s redirect and a jump resume at the new URL', async () => {
  const server = new ScriptedServer();
  const { client, events } = await open(server);
  server.publish();
  let reconnects = count(events, '@reconnect');
  server.current().close(1012, 'ws://next/a?node=b');
  await until('the move', () => count(events, '@reconnect') > reconnects);
  assert.equal(server.conns.at(-1).query, 'node=b&emitws_resume=1');
  assert.deepEqual(resumeRequest(server.conns.at(-1)).rooms, { [ROOM]: { epoch: 'e1', offset: 1 } });

  reconnects = count(events, '@reconnect');
  client.jump('ws://other/?node=c');
  await until('the jump', () => count(events, '@reconnect') > reconnects);
  assert.equal(server.conns.at(-1).query, 'node=c&emitws_resume=1');
  assert.equal(resumeRequest(server.conns.at(-1)).token, `tok-${server.tokens - 1}`);
  client.close();
});

test('@ready without an answer to @resume, or an error reply, counts as not resumed', async () => {
  const server = new ScriptedServer();
  const { client, events } = await open(server);
  server.publish();
  server.resume = (socket, id) => [[0, '@ready', { socket: 's-9', user: null }]];
  await outage(server, events, 1001);
  assert.deepEqual(events.filter(([event]) => event === '@resumed').at(-1)[1], {
    resumed: false, socket: 's-9', rooms: {}, direct: { recovered: false },
  });
  assert.equal(client.recovered(ROOM), false);
  assert.equal(client.socketId, 's-9');
  client.close();

  // That @ready gave no token: the next loss is not resumed. An error reply to @resume is reported as @error.
  const other = new ScriptedServer();
  const second = await open(other);
  other.resume = (socket, id) => [[3, id, { code: 'bad_request', message: 'no' }], other.ready(false)];
  await outage(other, second.events, 1001);
  assert.equal(second.client.recovered(ROOM), false);
  const errors = second.events.filter(([event]) => event === '@error').map(([, data]) => data.code);
  assert.deepEqual(errors, ['bad_request']);
  second.client.close();
});
