// The client against real emitws servers. tests/js_client.rs starts them and
// runs this file with EMITWS_URL (an app without auth that defines /echo,
// /fail, /later, /room/*, /ask, /kick (closes with 4000) and /cut (closes
// with 1013)), EMITWS_CHALLENGE_URL (challenge auth: the answer is [nonce
// reversed, user]) and EMITWS_AUTH_URL (first-message auth: /auth with
// 't-erin') set, the last two with /me, /kick and /cut; without them these
// tests are skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EmitClient, EmitError } from '../emitws.js';

const url = process.env.EMITWS_URL;
const challengeUrl = process.env.EMITWS_CHALLENGE_URL;
const authUrl = process.env.EMITWS_AUTH_URL;
const skip = url && challengeUrl && authUrl ? false : 'EMITWS_*URL are not set (cargo test --test js_client sets them)';

const connect = (options = {}) => EmitClient.connect(url, { reconnectDelay: 20, ...options });
const nextEvent = (client, event) => new Promise((resolve) => {
  const listener = (data) => {
    client.off(event, listener);
    resolve(data);
  };
  client.on(event, listener);
});

test('requests get their replies, errors and late replies', { skip }, async () => {
  const client = await connect();
  assert.equal(client.connected, true);
  assert.deepEqual(await client.request('/echo', { n: 1, s: 'é' }), { n: 1, s: 'é' });
  assert.equal(await client.request('/echo'), null);
  assert.equal(await client.request('/later'), 'later');
  await assert.rejects(client.request('/fail'), (e) => e instanceof EmitError && e.code === 'teapot' && e.message === 'I am a teapot');
  await assert.rejects(client.request('/nobody'), { code: 'no_handler' });
  client.close();
});

test('many requests in flight each get their own reply', { skip }, async () => {
  const client = await connect();
  const replies = await Promise.all(Array.from({ length: 200 }, (_, i) => client.request('/echo', i)));
  assert.deepEqual(replies, Array.from({ length: 200 }, (_, i) => i));
  client.close();
});

test('events both ways, and rooms through a namespace', { skip }, async () => {
  const a = await connect();
  const b = await connect();
  const echoed = nextEvent(a, '/echoed');
  a.emit('/echo', [1, 2]);
  assert.deepEqual(await echoed, [1, 2]);

  const room = { a: a.ns('/room'), b: b.ns('/room') };
  assert.equal(await room.a.request('/join'), true);
  assert.equal(await room.b.request('/join'), true);
  const heardByB = new Promise((resolve) => room.b.on('/said', resolve));
  const heardByA = new Promise((resolve) => room.a.on('/said', resolve));
  room.a.emit('/say', 'hello room');
  assert.equal(await heardByB, 'hello room');
  assert.equal(await heardByA, 'hello room');
  a.close();
  b.close();
});

test('the server calls procedures the client registered', { skip }, async () => {
  const client = await connect();
  client.register('double', (n) => n * 2);
  client.register('slowly', (n) => new Promise((resolve) => setTimeout(() => resolve(n + 1), 10)));
  client.register('broken', () => {
    throw new Error('it broke');
  });
  client.register('never', () => new Promise(() => {}));
  assert.deepEqual(await client.request('/ask', ['double', 21]), { answer: 42 });
  assert.deepEqual(await client.request('/ask', ['slowly', 1]), { answer: 2 });
  assert.deepEqual(await client.request('/ask', ['missing', null]), { error: 'not_registered' });
  assert.deepEqual(await client.request('/ask', ['broken', null]), { error: 'execution_failed', message: 'it broke' });
  assert.deepEqual(await client.request('/ask', ['never', null]), { error: 'timeout' });
  client.close();
});

test('a dropped connection fails pending requests, then reconnects by itself', { skip }, async () => {
  const client = await connect();
  const disconnected = nextEvent(client, '@disconnect');
  const reconnected = nextEvent(client, '@reconnect');
  const pending = client.request('/cut');
  await assert.rejects(pending, { code: 'disconnected' });
  assert.deepEqual(await disconnected, { code: 1013, reason: 'try again later' });
  await reconnected;
  assert.equal(client.connected, true);
  assert.equal(await client.request('/echo', 'again'), 'again');
  client.close();
});

test('a drop by the server is not retried', { skip }, async () => {
  const client = await connect();
  const disconnected = nextEvent(client, '@disconnect');
  const gaveUp = nextEvent(client, '@reconnect_failed');
  await assert.rejects(client.request('/kick'), { code: 'disconnected' });
  assert.deepEqual(await disconnected, { code: 4000, reason: 'kicked' });
  assert.equal((await gaveUp).attempts, 0);
  assert.equal(client.status, 'offline');
  await assert.rejects(client.request('/echo', 'again'), { code: 'offline' });
  client.close();
});

test('a client that cannot connect rejects with connect_failed and says why in @error', { skip }, async () => {
  const port = new URL(url).port;
  const wrong = url.replace(`:${port}`, ':1');
  const client = new EmitClient(wrong, { reconnect: false });
  const errors = [];
  client.on('@error', (error) => errors.push(error.code));
  await assert.rejects(client.open(), { code: 'connect_failed' });
  assert.deepEqual(errors, ['connect_failed']);
  assert.equal(client.status, 'offline');
});

/** Answers the test server's challenge as `user` (while `honest()`). */
const answering = (user, honest = () => true) => ({
  '@challenge': ({ challenge }) => [honest() ? [...challenge].reverse().join('') : 'forged', user],
});

test('challenge auth: 100 sequential connections are admitted on the first try', { skip }, async () => {
  const refused = [];
  for (let i = 0; i < 100; i++) {
    const client = new EmitClient(challengeUrl, { reconnect: false, procedures: answering('carol') });
    try {
      await client.open();
      // Right after connecting, a request is served as carol, not refused `unauthorized`.
      assert.equal(await client.request('/me'), 'carol');
    } catch (error) {
      refused.push([i, error.code, error.message]);
    }
    client.close();
  }
  assert.deepEqual(refused, []);
});

test('first-message auth: the auth request goes first, a request right after connect succeeds', { skip }, async () => {
  for (let i = 0; i < 20; i++) {
    const client = await EmitClient.connect(authUrl, { auth: { event: '/auth', data: 't-erin' } });
    assert.equal(await client.request('/me'), 'erin');
    assert.equal(client.welcome.user, 'erin');
    client.close();
  }
  const forger = new EmitClient(authUrl, { auth: { event: '/auth', data: 'forged' }, reconnect: false });
  const errors = [];
  forger.on('@error', (error) => errors.push(error));
  await assert.rejects(forger.open(), { code: 'connect_failed' });
  assert.deepEqual(errors, [{ code: 'unauthorized', message: 'the auth request was refused: unknown token' }]);
});

test('the status goes through a reconnect, then offline', { skip }, async () => {
  const client = new EmitClient(challengeUrl, { reconnectDelay: 20, procedures: answering('fay') });
  const statuses = [];
  client.on('@status', ({ status }) => statuses.push(status));
  assert.equal(client.status, 'idle');
  await client.open();
  assert.match(client.welcome.socket, /^[0-9a-f]+-[0-9a-f]+$/);
  const reconnected = nextEvent(client, '@reconnect');
  await assert.rejects(client.request('/cut'), { code: 'disconnected' });
  await reconnected;
  assert.equal(await client.request('/me'), 'fay');
  client.close();
  assert.deepEqual(statuses, ['connecting', 'authenticating', 'ready', 'reconnecting', 'authenticating', 'ready', 'offline']);
});

test('a refused reconnection gives up at once, is announced, and fails envelopes', { skip }, async () => {
  let honest = true;
  const procedures = answering('gus', () => honest);
  const client = await EmitClient.connect(challengeUrl, { reconnectDelay: 20, maxRetries: 2, procedures });
  const events = [];
  for (const name of ['@reconnecting', '@reconnect_failed']) client.on(name, (data) => events.push([name, data]));
  const gaveUp = nextEvent(client, '@reconnect_failed');
  honest = false; // The reconnection is refused (4403): no other attempt (PROTOCOL.md §6).
  await assert.rejects(client.request('/cut'), { code: 'disconnected' });
  const queued = client.request('/me');
  await gaveUp;
  await assert.rejects(queued, { code: 'offline' });
  assert.equal(client.status, 'offline');
  assert.throws(() => client.emit('/me'), { code: 'offline' });
  await assert.rejects(client.request('/me'), { code: 'offline' });
  assert.deepEqual(events.map(([name, data]) => [name, data.attempt ?? data.attempts]), [
    ['@reconnecting', 1],
    ['@reconnect_failed', 1],
  ]);
  client.close();
});
