// The client resumes against a real emitws server (PROTOCOL.md §13):
// tests/client_resume.rs serves an app with history on #room (/join joins
// it, /publish broadcasts /said to it) at EMITWS_RESUME_URL; this test puts
// a TCP proxy of its own between the client and the server, cuts the
// connection (no close frame, as a network drop), publishes meanwhile, and
// checks that the client recovers each broadcast exactly once, twice in a
// row. Without EMITWS_RESUME_URL it is skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { EmitClient } from '../emitws.js';

const url = process.env.EMITWS_RESUME_URL;
const skip = url ? false : 'EMITWS_RESUME_URL is not set (cargo test --test client_resume sets it)';

/** A TCP proxy to the server whose connections the test cuts, and which refuses new ones while offline. */
async function proxy(target) {
  const { hostname, port } = new URL(target.replace(/^ws/, 'http'));
  const sockets = new Set();
  const state = { offline: false };
  const server = net.createServer((client) => {
    if (state.offline) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(port), hostname);
    for (const [from, to] of [[client, upstream], [upstream, client]]) {
      sockets.add(from);
      from.on('error', () => to.destroy());
      from.on('close', () => {
        sockets.delete(from);
        to.destroy();
      });
      from.pipe(to);
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `ws://127.0.0.1:${server.address().port}/?app=1`,
    cut() {
      state.offline = true;
      for (const socket of sockets) socket.destroy();
    },
    online() {
      state.offline = false;
    },
    close: () => new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      server.close(resolve);
    }),
  };
}

/** Waits (bounded) until `predicate()` holds. */
async function until(what, predicate) {
  const deadline = Date.now() + 5000;
  while (!predicate()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

test('a client cut off recovers what was broadcast meanwhile, exactly once, twice in a row', { skip }, async (t) => {
  const cutter = await proxy(url);
  t.after(() => cutter.close());
  const client = await EmitClient.connect(cutter.url, { reconnectDelay: 20, maxReconnectDelay: 100 });
  t.after(() => client.close());
  const publisher = await EmitClient.connect(url);
  t.after(() => publisher.close());
  const said = [];
  const events = [];
  client.on('/said', ({ n }) => said.push(n));
  for (const name of ['@disconnect', '@resumed', '@reconnect']) client.on(name, (data) => events.push([name, data]));
  const count = (name) => events.filter(([event]) => event === name).length;
  assert.equal(await client.request('/join'), true);
  const socket = client.socketId;
  for (const n of [1, 2, 3]) await publisher.request('/publish', n);
  await until('3 broadcasts', () => said.length === 3);

  cutter.cut();
  await until('the loss', () => count('@disconnect') === 1);
  for (const n of [4, 5]) await publisher.request('/publish', n);
  cutter.online();
  await until('the resume', () => count('@reconnect') === 1);
  assert.equal(events.find(([event]) => event === '@resumed')?.[1].resumed, true, JSON.stringify(events));
  assert.deepEqual(said, [1, 2, 3, 4, 5]);
  assert.equal(client.recovered('#room'), true);
  assert.equal(client.socketId, socket, 'the same socket');

  // Again, with nothing published in between: nothing is replayed twice.
  cutter.cut();
  await until('the second loss', () => count('@disconnect') === 2);
  cutter.online();
  await until('the second resume', () => count('@reconnect') === 2);
  assert.deepEqual(said, [1, 2, 3, 4, 5]);
  assert.equal(client.recovered('#room'), true);
  await publisher.request('/publish', 6);
  await until('the next broadcast', () => said.length === 6);
  assert.deepEqual(said, [1, 2, 3, 4, 5, 6], 'still in the room');
});
