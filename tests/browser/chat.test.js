// The chat demo in a real browser: two pages join one room and talk; one
// reloads (a disconnect and a reconnect), and the other sees it leave and
// come back; one loses its connection and resumes without joining again. Headless Chromium from Debian (/usr/bin/chromium, or $CHROMIUM),
// driven by playwright-core; the server is examples/chat ($CHAT_BIN, built by
// scripts/test-all.sh). A screenshot of each page is left in artifacts/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const chatBin = process.env.CHAT_BIN ?? join(here, '../../target/release/examples/chat');
const artifacts = join(here, 'artifacts');
const WAIT = { timeout: 10_000 };

let server;
let base;
let browser;
let profile;

/** Starts the chat server on a free port and resolves with its base URL once it listens. */
function startServer(addr = '127.0.0.1:0') {
  return new Promise((resolve, reject) => {
    server = spawn(chatBin, ['--addr', addr], { stdio: ['ignore', 'pipe', 'inherit'] });
    server.on('error', reject);
    server.on('exit', (code) => reject(new Error(`chat server exited early (${code})`)));
    let output = '';
    server.stdout.on('data', (chunk) => {
      output += chunk;
      const match = output.match(/http:\/\/(127\.0\.0\.1:\d+)\//);
      if (match) resolve(`http://${match[1]}`);
    });
  });
}

before(async () => {
  base = await startServer();
  profile = mkdtempSync(join(tmpdir(), 'emitws-chromium-'));
  // launchPersistentContext is the way to give Chromium its own --user-data-dir.
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
});

function stopServer() {
  return new Promise((resolve) => {
    server.removeAllListeners('exit');
    server.on('exit', resolve);
    server.kill();
  });
}

after(async () => {
  await browser?.close();
  server?.removeAllListeners('exit');
  server?.kill();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

async function openChat(name, room) {
  const page = await browser.newPage();
  await page.goto(`${base}/?room=${room}&name=${name}`);
  await page.locator('#state.connected').waitFor(WAIT);
  await page.locator('#users li', { hasText: name }).waitFor(WAIT);
  return page;
}

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

test('two pages chat in one room, and a reload is seen as a leave and a join', { timeout: 60_000 }, async () => {
  const room = `e2e${Date.now()}`;
  const alice = await openChat('alice', room);
  const bob = await openChat('bob', room);

  // Both see each other in the user list.
  await alice.locator('#users li', { hasText: 'bob' }).waitFor(WAIT);
  await bob.locator('#users li', { hasText: 'alice' }).waitFor(WAIT);

  await say(alice, 'hello bob');
  await bob.locator('.msg', { hasText: 'hello bob' }).waitFor(WAIT);
  await say(bob, 'hi alice');
  await alice.locator('.msg', { hasText: 'hi alice' }).waitFor(WAIT);
  assert.equal(await alice.locator('.msg.mine', { hasText: 'hello bob' }).count(), 1);

  // Typing shows on the other page.
  await bob.type('#text', 'typ');
  await alice.locator('#typing', { hasText: 'bob is typing' }).waitFor(WAIT);
  await bob.fill('#text', '');

  // Bob reloads: his connection drops and a new one joins; alice sees both.
  await bob.reload();
  await alice.locator('.notice', { hasText: 'bob left' }).waitFor(WAIT);
  // The second "bob joined" (the first was his arrival).
  await alice.locator('.notice', { hasText: 'bob joined' }).nth(1).waitFor(WAIT);
  await bob.locator('#state.connected').waitFor(WAIT);

  // The room's recent history came back to bob with the join.
  await bob.locator('.msg', { hasText: 'hello bob' }).waitFor(WAIT);
  await say(bob, 'back again');
  await alice.locator('.msg', { hasText: 'back again' }).waitFor(WAIT);

  mkdirSync(artifacts, { recursive: true });
  await alice.screenshot({ path: join(artifacts, 'chat-alice.png') });
  await bob.screenshot({ path: join(artifacts, 'chat-bob.png') });
});

test('a page whose connection is lost resumes: missed messages once, without joining again', { timeout: 60_000 }, async () => {
  const room = `resume${Date.now()}`;
  const dave = await openChat('dave', room);
  const erin = await openChat('erin', room);
  await dave.locator('#users li', { hasText: 'erin' }).waitFor(WAIT);
  const socket = () => dave.evaluate(() => window.chat.socketId);
  const before = await socket();

  // Dave's client moves to an address where nothing listens: its connection
  // closes with 4001 (moving), which keeps the session as a drop does, and
  // it stays away while it keeps failing to connect.
  await dave.evaluate(() => window.chat.jump('ws://127.0.0.1:1/chat'));
  await dave.locator('#state.reconnecting').waitFor(WAIT);
  await erin.locator('.notice', { hasText: 'dave left' }).waitFor(WAIT);
  await say(erin, 'missed one');
  await say(erin, 'missed two');
  await erin.locator('.msg', { hasText: 'missed two' }).waitFor(WAIT);

  await dave.evaluate((url) => window.chat.jump(url), `${base.replace('http', 'ws')}/chat`);
  await dave.locator('.notice', { hasText: 'reconnected' }).waitFor(WAIT);
  assert.equal(await socket(), before, 'the same socket');
  // Resumed, not joined again: the page was not cleared, the missed messages
  // came once each, and the room did not say "you joined" twice.
  await dave.locator('.msg', { hasText: 'missed two' }).waitFor(WAIT);
  assert.equal(await dave.locator('.msg', { hasText: 'missed one' }).count(), 1);
  assert.equal(await dave.locator('.msg', { hasText: 'missed two' }).count(), 1);
  assert.equal(await dave.locator('.notice', { hasText: 'you joined' }).count(), 1);
  await dave.locator('.notice', { hasText: 'erin joined' }).waitFor(WAIT);

  // Still seated: erin sees dave back in the room and hears him.
  // (Erin came after dave: this is the first "dave joined" she sees.)
  await erin.locator('.notice', { hasText: 'dave joined' }).waitFor(WAIT);
  await erin.locator('#users li', { hasText: 'dave' }).waitFor(WAIT);
  await dave.locator('#users li', { hasText: 'erin' }).waitFor(WAIT);
  await say(dave, 'back without joining');
  await erin.locator('.msg', { hasText: 'back without joining' }).waitFor(WAIT);
});

test('the page shows a lost server and rejoins its room when it is back', { timeout: 60_000 }, async () => {
  const room = `again${Date.now()}`;
  const carol = await openChat('carol', room);

  await stopServer();
  await carol.locator('#state.reconnecting').waitFor(WAIT);
  await carol.locator('#send:disabled').waitFor(WAIT);

  await startServer(new URL(base).host);
  await carol.locator('#state.connected').waitFor(WAIT);
  // The page joined its room again on its own: the new server knows carol.
  // The page joined its room again on its own (the new server refuses a
  // message from a socket that has not joined).
  await say(carol, 'still here');
  await carol.locator('.msg.mine', { hasText: 'still here' }).waitFor(WAIT);
});
