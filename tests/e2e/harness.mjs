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

/** The binary under test: $PICAMD_BIN, else the debug build `cargo test` made (in
 * $CARGO_TARGET_DIR when that is set, as cargo does). */
export const PICAMD_BIN =
  process.env.PICAMD_BIN ??
  path.join(path.resolve(root, process.env.CARGO_TARGET_DIR ?? 'target'), 'debug/picamd');

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

/** A running picamd on 127.0.0.1:port (or `opts.host`, inside `opts.netns`). */
export class Picamd {
  /**
   * @param {number} port
   * @param {string[]} [args]
   * @param {{host?: string, netns?: Netns}} [opts]
   */
  constructor(port, args = [], opts = {}) {
    this.port = port;
    this.args = args;
    this.host = opts.host ?? '127.0.0.1';
    this.netns = opts.netns ?? null;
    this.proc = null;
  }

  get origin() {
    return `http://${this.host}:${this.port}`;
  }

  async start() {
    const args = ['--listen', `${this.host}:${this.port}`, '--allow-root', ...this.args];
    // `ip netns exec` execs picamd itself, so signals reach it directly.
    const [cmd, ...argv] = this.netns ? ['ip', 'netns', 'exec', this.netns.name, PICAMD_BIN, ...args] : [PICAMD_BIN, ...args];
    const proc = spawn(cmd, argv, {
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

/**
 * Kills `server` with SIGKILL once `page` plays live, waits for the player to notice, starts
 * it again 1.5 s later and waits for 10 more live frames: the player's own recovery, no
 * reload. Returns the stats when it noticed (`down`) and when it was back (`back`).
 */
export async function killAndRestart(page, server, timeoutMs = 15000) {
  await waitForStats(page, (s) => s.drawn >= 10 && s.state === 'live', 'live');
  await server.signal('SIGKILL');
  const down = await waitForStats(
    page, (s) => ['reconnecting', 'connecting', 'stalled'].includes(s.state), 'a reconnecting state');
  await sleep(1500);
  await server.start();
  const back = await waitForStats(
    page, (s) => s.state === 'live' && s.drawn >= down.drawn + 10, 'live frames again', timeoutMs);
  return { down, back };
}

/**
 * A network namespace of the test's own, for picamd and Chromium together, with one address
 * that looks like a LAN address to Chromium (10.77.0.1 on a TUN device that a helper holds
 * open, plus a default route: Chromium gathers WebRTC candidates only on an interface that is
 * up and routes). Traffic between the two never leaves the namespace (local addresses route
 * over its `lo`), and `block` blackholes UDP, or TCP to a port, by a policy-routing rule, to
 * model a network that blocks UDP or a port (sends fail at once, as behind a firewall that
 * rejects; this kernel has no tc drop action to model a silent one). Needs root;
 * `Netns.why()` says why not.
 */
export class Netns {
  static ADDR = '10.77.0.1';

  /** Null when namespaces can be made here, else the reason. */
  static why() {
    if (process.getuid?.() !== 0) return 'not root';
    return null;
  }

  constructor() {
    this.name = `picamd-e2e-${process.pid}-${Netns.count = (Netns.count ?? 0) + 1}`;
    this.holder = null;
    this.dir = null;
  }

  async create() {
    await run('ip', ['netns', 'add', this.name]);
    await run('ip', ['-n', this.name, 'link', 'set', 'lo', 'up']);
    // The TUN device is UP only while a process holds it open: a Python one-liner does.
    const holder = spawn('ip', ['netns', 'exec', this.name, 'python3', '-c', [
      'import fcntl, os, struct, sys',
      "fd = os.open('/dev/net/tun', os.O_RDWR)",
      "fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', b'lan0', 0x1001))",
      "print('ready', flush=True)",
      'sys.stdin.read()',
    ].join('\n')], { stdio: ['pipe', 'pipe', 'inherit'] });
    this.holder = holder;
    const [line] = await once(holder.stdout, 'data');
    if (!String(line).includes('ready')) throw new Error(`TUN holder: ${line}`);
    await run('ip', ['-n', this.name, 'addr', 'add', `${Netns.ADDR}/24`, 'dev', 'lan0']);
    await run('ip', ['-n', this.name, 'link', 'set', 'lan0', 'up']);
    await run('ip', ['-n', this.name, 'route', 'add', 'default', 'dev', 'lan0']);
    // Policy rules are looked up in order, and the `local` table's rule comes first (pref 0):
    // move it behind the room `block` uses (10…99), or no rule could stop local traffic.
    await run('ip', ['-n', this.name, 'rule', 'add', 'pref', '100', 'lookup', 'local']);
    await run('ip', ['-n', this.name, 'rule', 'del', 'pref', '0']);
    this.dir = await mkdtemp(path.join(tmpdir(), 'picamd-netns-'));
    return this;
  }

  /** Chromium started inside the namespace (a wrapper script as playwright's executable). */
  async launch(extraArgs = []) {
    const wrapper = path.join(this.dir, 'chromium');
    const exe = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
    await writeFile(wrapper, `#!/bin/sh\nexec ip netns exec ${this.name} ${exe} "$@"\n`, { mode: 0o755 });
    return chromium.launch({ executablePath: wrapper, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs] });
  }

  /**
   * Blocks traffic inside the namespace: `{udp: true}` every UDP datagram, `{tcpPort: N}` TCP
   * to port N. Returns a handle for `unblock`.
   */
  async block({ udp = false, tcpPort = null }) {
    const pref = String(10 + (this.count = (this.count ?? 0) + 1));
    const match = udp ? ['ipproto', 'udp'] : ['ipproto', 'tcp', 'dport', String(tcpPort)];
    await run('ip', ['-n', this.name, 'rule', 'add', 'pref', pref, ...match, 'blackhole']);
    return pref;
  }

  async unblock(pref) {
    await run('ip', ['-n', this.name, 'rule', 'del', 'pref', pref]);
  }

  async destroy() {
    this.holder?.kill('SIGKILL');
    this.holder = null;
    await run('ip', ['netns', 'del', this.name]).catch(() => {});
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
    this.dir = null;
  }
}

/** Runs a command to completion; rejects with its stderr on failure. */
export function run(cmd, args) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    p.stderr.on('data', (d) => (err += d));
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}: ${err.trim()}`))));
  });
}

/** Reads the test pattern's frame-number cells and a few bar colours back from the canvas. */
export async function readCanvas(page) {
  return page.evaluate(() => {
    const host = document.querySelector('picam-player');
    const canvas = document.querySelector('canvas') ?? host?.shadowRoot?.querySelector('canvas');
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    const { width, height } = canvas;
    const px = (x, y) => Array.from(ctx.getImageData(Math.floor(x), Math.floor(y), 1, 1).data.slice(0, 3));
    // Cells along the top edge spell the frame number, MSB first (see docs/sources.md, "The test pattern").
    const cell = Math.max(2, Math.floor(width / 64)) & ~1;
    let seq = 0;
    for (let bit = 0; bit < 32; bit++) {
      const [r, g, b] = px(bit * cell + cell / 2, cell / 2);
      seq = seq * 2 + ((r + g + b) / 3 > 128 ? 1 : 0);
    }
    // The rightmost colour bar (blue) at three heights; the moving box covers at most one.
    const blue = [0.3, 0.45, 0.6].map((f) => px(width * 0.93, height * f));
    return { width, height, seq, blue };
  });
}
