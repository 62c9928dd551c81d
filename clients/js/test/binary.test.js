// Binary envelopes (emitws.v2, PROTOCOL.md §10): the client's frames checked
// byte by byte against a scripted socket, then against a real emitws server.
// tests/app_binary.rs starts it and runs this file with EMITWS_BINARY_URL (an
// app with /echo (replies the bytes), /len, /later (a deferred binary reply),
// /join (#r), /share (broadcasts /shared to #r, emits /mine back) and
// /ask-bytes (calls the client's `photo` and replies its answer)); without it
// the server tests are skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EmitClient, EmitError, PROTOCOL_V2 } from '../emitws.js';

const url = process.env.EMITWS_BINARY_URL;
const skip = url ? false : 'EMITWS_BINARY_URL is not set (cargo test --test app_binary sets it)';

/** A WebSocket stand-in whose server chose `protocol`: records what is sent, lets the test play the server. */
class ScriptedSocket {
  static instances = [];
  static protocol = PROTOCOL_V2;
  constructor(url, protocols) {
    Object.assign(this, { url, protocols, readyState: 0, sent: [], protocol: ScriptedSocket.protocol });
    ScriptedSocket.instances.push(this);
    queueMicrotask(() => {
      this.readyState = 1;
      this.onopen?.();
      this.onmessage?.({ data: JSON.stringify([0, '@ready', { socket: '0-1', user: null }]) });
    });
  }
  send(frame) {
    this.sent.push(frame);
  }
  serverSends(bytes) {
    this.onmessage?.({ data: new Uint8Array(bytes).buffer });
  }
  close(code = 1000, reason = '') {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

const scripted = (options = {}) => EmitClient.connect('ws://test/', { WebSocket: ScriptedSocket, binary: true, ...options });
const last = () => ScriptedSocket.instances.at(-1);

test('binary envelopes are written and read as PROTOCOL.md §10 lays them out', async () => {
  const client = await scripted();
  assert.deepEqual(last().protocols, ['emitws.v2', 'emitws.v1']);
  assert.equal(last().binaryType, 'arraybuffer');
  assert.equal(client.binary, true);
  // Request 300 to /up with DE AD BE EF: 01 AC 02 03 2F 75 70 DE AD BE EF.
  client._nextId = 300;
  const reply = client.request('/up', new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
  assert.deepEqual([...last().sent.at(-1)], [0x01, 0xac, 0x02, 0x03, 0x2f, 0x75, 0x70, 0xde, 0xad, 0xbe, 0xef]);
  last().serverSends([0x02, 0xac, 0x02, 0x00, 0xff]);
  assert.deepEqual([...(await reply)], [0x00, 0xff]);
  // An event without payload: 00 02 2F 78; an ArrayBuffer and a DataView are bytes too.
  client.emit('/x', new ArrayBuffer(0));
  assert.deepEqual([...last().sent.at(-1)], [0x00, 0x02, 0x2f, 0x78]);
  client.emit('/x', new DataView(new Uint8Array([7, 8, 9]).buffer, 1, 1));
  assert.deepEqual([...last().sent.at(-1)], [0x00, 0x02, 0x2f, 0x78, 0x08]);
  // The largest id takes 8 bytes.
  client._nextId = 2 ** 53 - 1;
  const far = client.request('/y', new Uint8Array([1]));
  assert.deepEqual([...last().sent.at(-1)].slice(0, 9), [1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f]);
  last().serverSends([0x03, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, ...Buffer.from('{"code":"nope","message":"m"}')]);
  await assert.rejects(far, (e) => e instanceof EmitError && e.code === 'nope' && e.message === 'm');
  // Events from the server reach `on` listeners as Uint8Array.
  const got = [];
  client.on('/frame', (data) => got.push(data));
  last().serverSends([0x00, 0x06, ...Buffer.from('/frame'), 1, 2, 3]);
  assert.ok(got[0] instanceof Uint8Array);
  assert.deepEqual([...got[0]], [1, 2, 3]);
  // Malformed headers are reported locally, never answered; later types ignored.
  const errors = [];
  client.on('@error', (error) => errors.push(error.code));
  const before = last().sent.length;
  for (const junk of [[], [0x01], [0x02, 0x80], [0x02, 0x81, 0x00], [0x00, 0x05, 0x2f], [0x00, 0x00], [0x02, 0x00]]) last().serverSends(junk);
  last().serverSends([0x09, 1, 2]);
  assert.deepEqual(errors, Array(7).fill('bad_request'));
  assert.equal(last().sent.length, before);
  client.close();
});

test('type 4, a broadcast with its room position, is delivered once and tracked like a fourth element', async () => {
  const client = await scripted();
  const got = [];
  client.on('/frame', (data) => got.push([...data]));
  const at = (offset, epoch, payload) => {
    const position = Buffer.from(JSON.stringify({ room: '#r', offset, epoch }));
    return [0x04, 0x06, ...Buffer.from('/frame'), position.length, ...position, ...payload];
  };
  last().serverSends(at(1, 'ab', [1]));
  last().serverSends(at(2, 'ab', [2]));
  last().serverSends(at(2, 'ab', [2])); // a replay's overlap: dropped
  last().serverSends(at(1, 'cd', [3])); // another epoch: new
  assert.deepEqual(got, [[1], [2], [3]]);
  assert.deepEqual(client._positions.get('#r'), { epoch: 'cd', offset: 1 });
  const errors = [];
  client.on('@error', (error) => errors.push(error.code));
  for (const junk of [[0x04, 0x02, 0x2f, 0x78], [0x04, 0x02, 0x2f, 0x78, 0x03, 0x7b], [0x04, 0x02, 0x2f, 0x78, 0x01, 0x7b]]) last().serverSends(junk);
  assert.deepEqual(errors, Array(3).fill('bad_request'), 'no position, one past the end, one not JSON');
  client.close();
});

test('a name that does not fit a binary header, or bytes without emitws.v2, fail with bad_request', async () => {
  const client = await scripted();
  assert.throws(() => client.emit('/' + 'x'.repeat(255), new Uint8Array(1)), { code: 'bad_request' });
  client.close();
  const plain = await scripted({ binary: false });
  assert.deepEqual(last().protocols, ['emitws.v1']);
  assert.throws(() => plain.emit('/x', new Uint8Array(1)), { code: 'bad_request' });
  await assert.rejects(plain.request('/x', new Uint8Array(1)), { code: 'bad_request' });
  plain.close();
  // Offered v2 but the server chose v1: queued bytes fail once the subprotocol is known.
  ScriptedSocket.protocol = 'emitws.v1';
  const old = new EmitClient('ws://test/', { WebSocket: ScriptedSocket, binary: true });
  const queued = old.request('/x', new Uint8Array(1));
  await old.open();
  await assert.rejects(queued, { code: 'bad_request' });
  assert.equal(old.binary, false);
  old.close();
  ScriptedSocket.protocol = PROTOCOL_V2;
});

test('binary requests get binary or JSON replies from a real server', { skip }, async (t) => {
  const client = await EmitClient.connect(url, { binary: true });
  t.after(() => client.close());
  assert.equal(client.binary, true);
  const bytes = Uint8Array.from({ length: 1000 }, (_, i) => i % 256);
  const echoed = await client.request('/echo', bytes);
  assert.ok(echoed instanceof Uint8Array);
  assert.deepEqual([...echoed], [...bytes]);
  assert.deepEqual([...(await client.request('/echo', Buffer.from('hi')))], [104, 105]);
  assert.deepEqual(await client.request('/len', new Uint8Array(3).buffer), { len: 3, v2: true });
  assert.deepEqual(await client.request('/len'), { len: null, v2: true });
  assert.deepEqual([...(await client.request('/later', new Uint8Array([5, 6])))], [5, 6]);
  // Ids past one LEB128 byte: 200 in flight, each with its own reply.
  const many = await Promise.all(Array.from({ length: 200 }, (_, i) => client.request('/echo', new Uint8Array([i]))));
  assert.deepEqual(many.map((reply) => reply[0]), Array.from({ length: 200 }, (_, i) => i));
});

test('binary broadcasts reach v2 clients as bytes and v1 clients as base64', { skip }, async (t) => {
  const v2 = await EmitClient.connect(url, { binary: true });
  const v1 = await EmitClient.connect(url);
  t.after(() => {
    v1.close();
    v2.close();
  });
  assert.equal(v1.binary, false);
  assert.equal(await v2.request('/join'), true);
  assert.equal(await v1.request('/join'), true);
  const mine = new Promise((resolve) => v2.on('/mine', resolve));
  const shared = new Promise((resolve) => v1.on('/shared', resolve));
  v2.emit('/share', new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
  assert.deepEqual([...(await mine)], [0xde, 0xad, 0xbe, 0xef]);
  assert.deepEqual(await shared, { base64: '3q2+7w==' });
});

test('a procedure answers the server with bytes', { skip }, async (t) => {
  const client = await EmitClient.connect(url, { binary: true, procedures: { photo: () => new Uint8Array([0xde, 0xad]) } });
  t.after(() => client.close());
  assert.deepEqual(await client.request('/ask-bytes'), { base64: '3q0=' });
});
