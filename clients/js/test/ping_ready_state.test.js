// The application-level ping (PROTOCOL.md §9.1) and `readyState` against a
// real emitws app. tests/app_seeds_openspeed.rs starts it and runs this file
// with EMITWS_SEEDS_URL: an app whose `/lag` pings the asking socket from
// its handler (`SocketRef::ping_then`) and replies with the round trip in
// microseconds; without it these tests are skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EmitClient, ReadyState } from '../emitws.js';

const url = process.env.EMITWS_SEEDS_URL;
const skip = url ? false : 'EMITWS_SEEDS_URL is not set (cargo test --test app_seeds_openspeed sets it)';

test('ping measures a round trip to the server, and the client answers the server\'s', { skip }, async () => {
  const client = await EmitClient.connect(url);
  const events = [];
  client.on('@any', (event) => events.push(event));
  const rtt = await client.ping();
  assert.equal(typeof rtt, 'number');
  assert.ok(rtt >= 0 && rtt < 10000, `${rtt}`);
  // The server's ping, answered by the library without a registered procedure.
  const micros = await client.request('/lag');
  assert.ok(Number.isSafeInteger(micros) && micros >= 0, `${micros}`);
  assert.deepEqual(events, []);
  // A procedure of that name does not take the ping over.
  client.register('@ping', () => {
    throw new Error('not called');
  });
  assert.ok(Number.isSafeInteger(await client.request('/lag')));
  client.close();
  await assert.rejects(client.ping(), { code: 'closed' });
});

test('readyState follows the WebSocket numbers', { skip }, async () => {
  assert.deepEqual(
    [EmitClient.CONNECTING, EmitClient.OPEN, EmitClient.CLOSING, EmitClient.CLOSED],
    [ReadyState.CONNECTING, ReadyState.OPEN, ReadyState.CLOSING, ReadyState.CLOSED],
  );
  assert.deepEqual(Object.values(ReadyState), [0, 1, 2, 3]);
  const client = new EmitClient(url, { reconnectDelay: 20 });
  assert.equal(client.readyState, EmitClient.CLOSED, 'idle');
  const opening = client.open();
  assert.equal(client.readyState, EmitClient.CONNECTING);
  await opening;
  assert.equal(client.readyState, EmitClient.OPEN);
  const socket = client._socket;
  const closed = new Promise((resolve) => socket.addEventListener('close', resolve));
  client.close();
  assert.equal(client.readyState, EmitClient.CLOSING, 'until the close handshake is over');
  await closed;
  // The client's own close listener runs after the one above was added: wait a turn.
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(client.readyState, EmitClient.CLOSED, 'offline');
});

test('a ping made before ready waits for ready', { skip }, async () => {
  const client = new EmitClient(url);
  const ping = client.ping();
  client.open();
  assert.ok((await ping) >= 0);
  client.close();
});
