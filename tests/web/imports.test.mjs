// Every module of the player loads in Node without a DOM: nothing touches window, document,
// navigator or the canvas APIs at import time (they are used only when called).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const dir = fileURLToPath(new URL('../../src/web/', import.meta.url));

test('all modules import without DOM globals', async () => {
  assert.equal(typeof globalThis.document, 'undefined');
  const files = readdirSync(dir).filter((f) => f.endsWith('.js') && f !== 'main.js');
  assert.ok(files.length >= 10);
  for (const f of files) {
    const mod = await import(new URL(f, `file://${dir}`));
    assert.ok(Object.keys(mod).length > 0, `${f} exports something`);
  }
});

test('the MJPEG change hash is FNV-1a', async () => {
  const { hashBytes, cacheBustedUrl } = await import('../../src/web/mjpeg-source.js');
  assert.equal(hashBytes(new Uint8Array()), 0x811c9dc5);
  assert.equal(hashBytes(new TextEncoder().encode('a')), 0xe40c292c);
  assert.notEqual(hashBytes(new Uint8Array([1, 2, 3])), hashBytes(new Uint8Array([1, 2, 4])));
  const a = cacheBustedUrl('/stream');
  assert.match(a, /^\/stream\?t=[0-9a-z]+$/);
  assert.match(cacheBustedUrl('/stream?x=1'), /^\/stream\?x=1&t=/);
});

test('camera availability explains an insecure page', async () => {
  const { cameraAvailability, cameraErrorMessage } = await import('../../src/web/camera-source.js');
  const insecure = cameraAvailability({ isSecureContext: false, navigator: {} });
  assert.equal(insecure.ok, false);
  assert.match(insecure.message, /HTTPS/);
  assert.match(insecure.message, /localhost/);
  assert.equal(cameraAvailability({ isSecureContext: true, navigator: {} }).reason, 'unsupported');
  assert.equal(cameraAvailability({ isSecureContext: true, navigator: { mediaDevices: { getUserMedia() {} } } }).ok, true);
  assert.match(cameraErrorMessage({ name: 'NotAllowedError' }), /denied/);
});

test('the WebSocket URL follows the page scheme', async () => {
  const { wsUrl } = await import('../../src/web/ws-source.js');
  assert.equal(wsUrl('/ws', { protocol: 'http:', host: 'pi.local:8080' }), 'ws://pi.local:8080/ws');
  assert.equal(wsUrl('/ws', { protocol: 'https:', host: 'cam.example' }), 'wss://cam.example/ws');
});
