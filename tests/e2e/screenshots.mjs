// Takes the README's screenshots of the player in Debian's Chromium against the real binary:
//   node tests/e2e/screenshots.mjs [output dir, default docs/]
// Not a test: run it by hand after changing how the player looks.

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Picamd, freePort, launch, openPlayer, waitForStats, sleep } from './harness.mjs';

const out = process.argv[2] ?? 'docs';
const port = await freePort();
let server = await new Picamd(port, ['--size', '1280x720', '--fps', '30']).start();
const browser = await launch([
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
]);
const shot = async (page, name) => {
  await page.screenshot({ path: path.join(out, name) });
  console.log(`wrote ${path.join(out, name)}`);
};
try {
  const live = await openPlayer(browser, `http://localhost:${port}/?source=ws&theme=dark`, {
    viewport: { width: 1100, height: 720 },
  });
  await waitForStats(live.page, (s) => s.drawn >= 60 && s.state === 'live', 'live');
  await shot(live.page, 'player-live.png');

  await server.signal('SIGKILL');
  await waitForStats(live.page, (s) => s.state === 'reconnecting', 'reconnecting');
  await sleep(300);
  await shot(live.page, 'player-reconnecting.png');
  server = await new Picamd(port, ['--size', '1280x720']).start();
  await live.context.close();

  const phone = await openPlayer(browser, `http://localhost:${port}/?source=ws&theme=light`, {
    viewport: { width: 390, height: 780 },
  });
  await waitForStats(phone.page, (s) => s.drawn >= 30 && s.state === 'live', 'live on a phone');
  await shot(phone.page, 'player-phone-light.png');
  await phone.context.close();

  const cam = await openPlayer(browser, `http://localhost:${port}/?source=camera&theme=dark`, {
    viewport: { width: 1100, height: 720 },
  });
  await waitForStats(cam.page, (s) => s.source === 'camera' && s.drawn >= 30, 'camera');
  await shot(cam.page, 'player-local-camera.png');
  await cam.context.close();

  await grid();
} finally {
  await browser.close();
  await server.stop();
}

/** The grid of several streams; one of them stalls for good and shows "no signal". */
async function grid() {
  const dir = await mkdtemp(path.join(tmpdir(), 'picamd-shots-'));
  const config = path.join(dir, 'picamd.toml');
  await writeFile(config, [
    'fps = 30',
    '[[stream]]\nname = "front-door"\nsource = "test"\nsize = "1280x720"',
    '[[stream]]\nname = "printer"\nsource = "test"\nsize = "640x480"',
    '[[stream]]\nname = "garage"\nsource = "test:live=2,stall=600"\nsize = "640x360"',
  ].join('\n'));
  const multi = await new Picamd(await freePort(), ['--config', config]).start();
  try {
    const g = await openPlayer(browser, `http://localhost:${multi.port}/?grid=1&theme=dark`, {
      viewport: { width: 1100, height: 720 },
    });
    const deadline = Date.now() + 20000;
    while (Date.now() < deadline) {
      const t = await g.page.evaluate(() => window.picamd.tiles);
      if (t['front-door']?.drawn >= 30 && t.printer?.drawn >= 30 && t.garage?.badge === 'no-signal') break;
      await sleep(200);
    }
    await sleep(300);
    await shot(g.page, 'player-grid.png');
    await g.context.close();
  } finally {
    await multi.stop();
    await rm(dir, { recursive: true, force: true });
  }
}
