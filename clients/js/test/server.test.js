// The client against a real emitws server. tests/js_client.rs starts the
// server (its app defines /echo, /fail, /later, /room/*, /ask and /kick) and
// runs this file with EMITWS_URL set; without it these tests are skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EmitClient, EmitError } from '../emitws.js';

const url = process.env.EMITWS_URL;
const skip = url ? false : 'EMITWS_URL is not set (cargo test --test js_client sets it)';

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
  const pending = client.request('/kick');
  await assert.rejects(pending, { code: 'disconnected' });
  assert.deepEqual(await disconnected, { code: 4000, reason: 'kicked' });
  await reconnected;
  assert.equal(client.connected, true);
  assert.equal(await client.request('/echo', 'again'), 'again');
  client.close();
});

test('a client that cannot connect rejects with connect_failed', { skip }, async () => {
  const port = new URL(url).port;
  const wrong = url.replace(`:${port}`, ':1');
  await assert.rejects(EmitClient.connect(wrong, { reconnect: false }), { code: 'connect_failed' });
});
