// Text that JSON.stringify writes with escapes (quotes, backslashes, newlines,
// tabs), plus slashes, accents and an emoji, sent by this client to the
// example servers and read back intact. tests/examples_data.rs starts the
// examples (chat, rooms, app_echo) and runs this file with their URLs in
// EMITWS_CHAT_URL, EMITWS_ROOMS_URL and EMITWS_APP_ECHO_URL; without them
// these tests are skipped.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EmitClient } from '../emitws.js';

const urls = {
  chat: process.env.EMITWS_CHAT_URL,
  rooms: process.env.EMITWS_ROOMS_URL,
  echo: process.env.EMITWS_APP_ECHO_URL,
};
const skip = (url) => (url ? false : 'the example URLs are not set (cargo test --test examples_data sets them)');

const TEXTS = ['say "hi"', 'back\\slash', 'two\nlines', 'tab\there', 'a/b', 'café', 'smile 😀', 'all: " \\ \n \t / é 😀 end'];

/** A queue of an event's data: `next()` resolves with the oldest one not yet taken. */
function heard(client, event) {
  const kept = [];
  const waiting = [];
  client.on(event, (data) => (waiting.length ? waiting.shift()(data) : kept.push(data)));
  return { next: () => (kept.length ? Promise.resolve(kept.shift()) : new Promise((resolve) => waiting.push(resolve))) };
}

test('chat: names and messages with escapes, live and from the history', { skip: skip(urls.chat) }, async () => {
  const ann = await EmitClient.connect(urls.chat);
  const bob = await EmitClient.connect(urls.chat);
  const annHears = { message: heard(ann, '/chat/message'), typing: heard(ann, '/chat/typing') };
  const name = '"ann"\t\\é😀';
  const joined = await ann.request('/chat/join', { room: 'general', name });
  assert.deepEqual(joined.users, [name]);
  for (const text of TEXTS) {
    assert.equal(await ann.request('/chat/say', { room: 'general', text }), true);
    const message = await annHears.message.next();
    assert.deepEqual([message.user, message.text], [name, text]);
  }
  const later = await bob.request('/chat/join', { room: 'general', name: 'b\\"ob"' });
  assert.deepEqual(later.history.map((said) => said.text), TEXTS);
  assert.deepEqual(later.users, [name, 'b\\"ob"'].sort());
  bob.emit('/chat/typing', { room: 'general' });
  assert.deepEqual(await annHears.typing.next(), { room: 'general', user: 'b\\"ob"' });
  ann.close();
  bob.close();
});

test('rooms: usernames, rooms and messages with escapes', { skip: skip(urls.rooms) }, async () => {
  const ann = await EmitClient.connect(urls.rooms);
  const bob = await EmitClient.connect(urls.rooms);
  const annHears = { joined: heard(ann, 'user-joined'), message: heard(ann, 'message') };
  const bobHears = heard(bob, 'message');
  const room = 'a "room"\n\\ / é😀';
  assert.deepEqual(await ann.request('/join', { username: 'ann', room }), { joined: `#${room}` });
  const username = 'b\\"ob"\t';
  assert.deepEqual(await bob.request('/join', { username, room }), { joined: `#${room}` });
  assert.deepEqual(await annHears.joined.next(), { username });
  for (const text of TEXTS) {
    bob.emit('/message', { text });
    assert.deepEqual(await annHears.message.next(), { username, text });
    assert.deepEqual(await bobHears.next(), { username, text });
  }
  ann.close();
  bob.close();
});

test('app_echo: requests and broadcasts relay escaped text', { skip: skip(urls.echo) }, async () => {
  const client = await EmitClient.connect(urls.echo);
  const pub = heard(client, '/pub');
  assert.equal(await client.request('/join'), true);
  for (const text of TEXTS) {
    assert.equal(await client.request('/echo', text), text);
    client.emit('/pub', { [text]: text });
    assert.deepEqual(await pub.next(), { [text]: text });
  }
  client.close();
});
