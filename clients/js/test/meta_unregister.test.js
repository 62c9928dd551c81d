// Connection metadata and unregistering procedures, against a real emitws
// server: tests/app_seeds_egg_wse.rs starts it (an app whose /who answers
// {meta, first, identity, user, addr} and whose /ask calls the client's
// procedure named in the data) and runs this file with EMITWS_SEEDS_URL.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EmitClient } from '../emitws.js';

const url = process.env.EMITWS_SEEDS_URL;
const skip = url ? false : 'EMITWS_SEEDS_URL is not set (cargo test --test app_seeds_egg_wse sets it)';

test('metadata goes with every connection', { skip }, async () => {
  const meta = { app: '2.0', lang: 'uk é&=' };
  const client = await EmitClient.connect(url, { meta });
  const who = await client.request('/who');
  assert.deepEqual(who.meta, meta);
  assert.equal(who.user, 'js');
  client.close();
  const bare = await EmitClient.connect(url);
  assert.equal((await bare.request('/who')).meta, null);
  bare.close();
});

test('an unregistered procedure answers not_registered', { skip }, async () => {
  const client = await EmitClient.connect(url);
  client.register('/client/version', () => '1.0');
  client.ns('/client').register('/lang', () => 'uk');
  assert.deepEqual(await client.request('/ask', '/client/version'), { answer: '1.0' });
  assert.deepEqual(await client.request('/ask', '/client/lang'), { answer: 'uk' });
  client.unregister('/client/version');
  client.ns('/client').unregister('/lang');
  assert.deepEqual(await client.request('/ask', '/client/version'), { error: 'not_registered' });
  assert.deepEqual(await client.request('/ask', '/client/lang'), { error: 'not_registered' });
  client.close();
});
