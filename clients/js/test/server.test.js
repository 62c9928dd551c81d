// The client against a real emitws server (the Rust example protocol_server,
// built by `cargo test` or `cargo build --example protocol_server`): events,
// requests, errors, namespaces, rooms, server-to-client calls and reconnects.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { EmitClient, EmitError } from '../emitws.js';

const binary =
  process.env.EMITWS_PROTOCOL_SERVER ??
  fileURLToPath(new URL('../../../target/debug/examples/protocol_server', import.meta.url));

let server;
let url;

before(async () => {
  assert.ok(existsSync(binary), `${binary} is missing: run cargo build --example protocol_server`);
  server = spawn(binary, ['127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const address = await new Promise((resolve, reject) => {
    server.stdout.once('data', (line) => resolve(line.toString().trim()));
    server.once('exit', (code) => reject(new Error(`protocol_server exited with ${code}`)));
  });
  url = `ws://${address}/`;
});

after(() => server?.kill());

const next = (client, event) => new Promise((resolve) => client.on(event, resolve));

test('requests, events, errors and namespaces against the server', async () => {
  const client = await EmitClient.connect(url, { reconnect: false });
  // The welcome follows the upgrade; the listener is in place before the next message task.
  assert.ok((await next(client, '/welcome')).id);
  assert.deepEqual(await client.request('/ping'), { pong: true });
  assert.equal(await client.ns('/math').request('/sum', [1, 2, 3.5]), 6.5);
  await assert.rejects(client.request('/nope'), (e) => e instanceof EmitError && e.code === 'no_handler');
  await assert.rejects(client.request('/math/sum', 'x'), (e) => e.code === 'bad_request');
  const error = next(client, '@error');
  client.emit('@connection');
  assert.equal((await error).code, 'bad_request');
  client.close();
});

test('rooms reach every member, and the server calls the client', async () => {
  const [a, b] = await Promise.all([EmitClient.connect(url), EmitClient.connect(url)]);
  assert.equal(await a.request('/join', 'lobby'), true);
  assert.equal(await b.request('/join', 'lobby'), true);
  const heardA = next(a, '/said');
  const heardB = next(b, '/said');
  a.emit('/say', { room: 'lobby', text: 'hello' });
  assert.deepEqual(await Promise.all([heardA, heardB]), ['hello', 'hello']);
  a.register('confirm', async (question) => `yes to ${question}`);
  assert.deepEqual(await a.request('/ask', 'tea?'), { answer: 'yes to tea?' });
  await assert.rejects(b.request('/ask', 'tea?'), (e) => e.code === 'call_failed' && /no such procedure/.test(e.message));
  a.close();
  b.close();
});

test('the client reconnects after the server closes it', async () => {
  const client = await EmitClient.connect(url, { reconnectDelay: 10 });
  const reconnected = next(client, '@reconnect');
  const disconnected = next(client, '@disconnect');
  client.emit('/bye');
  assert.equal((await disconnected).code, 4000);
  await reconnected;
  assert.deepEqual(await client.request('/ping'), { pong: true });
  client.close();
});
