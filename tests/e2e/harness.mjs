// Shared pieces of the browser end-to-end tests: the real picamd binary on 127.0.0.1 and
// Debian's Chromium driven by playwright-core (never a downloaded browser).

import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The binary under test: $PICAMD_BIN, else the debug build `cargo test` made. */
export const PICAMD_BIN = process.env.PICAMD_BIN ?? path.join(root, 'target/debug/picamd');

/** A TCP port that was free a moment ago (so a restarted server can take the same one). */
export async function freePort() {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address();
  srv.close();
  await once(srv, 'close');
  return port;
}

/** A running picamd on 127.0.0.1:port. */
export class Picamd {
  constructor(port, args = []) {
    this.port = port;
    this.args = args;
    this.proc = null;
  }

  get origin() {
    return `http://127.0.0.1:${this.port}`;
  }

  async start() {
    const proc = spawn(PICAMD_BIN, ['--listen', `127.0.0.1:${this.port}`, '--allow-root', ...this.args], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
    });
    this.proc = proc;
    let out = '';
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`picamd did not start: ${out}`)), 15000);
      proc.stdout.on('data', (d) => {
        out += d;
        if (out.includes('listening on')) {
          clearTimeout(timer);
          resolve();
        }
      });
      proc.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`picamd exited with ${code}: ${out}`));
      });
    });
    proc.removeAllListeners('exit');
    return this;
  }

  /** Sends `signal` and, for terminating signals, waits for the exit. */
  async signal(signal) {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return null;
    const exited = once(proc, 'exit');
    proc.kill(signal);
    if (signal === 'SIGSTOP' || signal === 'SIGCONT') return null;
    const [code, sig] = await exited;
    this.proc = null;
    return { code, sig };
  }

  async stop() {
    if (this.proc) await this.signal('SIGCONT');
    const exit = await this.signal('SIGTERM');
    if (this.tempDir) await rm(this.tempDir, { recursive: true, force: true });
    this.tempDir = null;
    return exit;
  }
}

/**
 * Starts picamd on a free port with `toml` as its config file, written to a temporary
 * directory that `stop()` removes.
 */
export async function startWithConfig(toml) {
  const dir = await mkdtemp(path.join(tmpdir(), 'picamd-e2e-'));
  const config = path.join(dir, 'picamd.toml');
  await writeFile(config, toml);
  const server = new Picamd(await freePort(), ['--config', config]);
  server.tempDir = dir;
  try {
    return await server.start();
  } catch (e) {
    await server.stop();
    throw e;
  }
}

/** Flags the workplace needs for a quiet, sandbox-free headless Chromium. */
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
  '--no-first-run',
];

export async function launch(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    headless: true,
    args: [...CHROMIUM_ARGS, ...extraArgs],
  });
}

/** Opens `url` in a fresh page, failing the test on any page error. */
export async function openPlayer(browser, url, { viewport = { width: 1280, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(e));
  await page.goto(url);
  await page.waitForFunction(() => window.picamd?.stats, null, { timeout: 10000 });
  // Marks this document: if the page reloads, the mark is gone.
  await page.evaluate(() => {
    window.__notReloaded = true;
  });
  return { page, context, errors };
}

export const stats = (page) => page.evaluate(() => ({ ...window.picamd.stats }));

/** Polls `stats` until `pred(stats)` holds; returns the stats that satisfied it. */
export async function waitForStats(page, pred, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await stats(page);
    if (pred(last)) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}; last stats ${JSON.stringify(last)}`);
}

/** Makes the page believe it was hidden or shown (tab switch), as the player sees it. */
export const setPageHidden = (page, hidden) => page.evaluate((h) => {
  Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
  Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
  document.dispatchEvent(new Event('visibilitychange'));
}, hidden);

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
