// Drives a real JupyterLab (with hubfs-jupyterlab) on a real hubfs home in
// headless Debian chromium (playwright-core, no browser download), as a user
// filling their home: ~10 %, ~85 %, 100 % (to EDQUOT), then "What uses my
// space?" and a delete from it. Prints one JSON object of what it saw on
// stdout; tests/tests/lab_quota.rs starts the pieces and asserts on it.
//
// Arguments (environment): LAB_URL (with ?token=), HOME_DIR (the mount),
// NOTEBOOK_UID, SHOTS (a directory for screenshots), CHROMIUM.

import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const LAB_URL = env('LAB_URL');
const HOME = env('HOME_DIR');
const UID = env('NOTEBOOK_UID');
const SHOTS = env('SHOTS');
const MiB = 1 << 20;

/** Runs a shell command as the notebook user (files belong to them). */
function asUser(script) {
  try {
    execFileSync(
      'setpriv',
      [`--reuid=${UID}`, `--regid=${UID}`, '--clear-groups', '--', 'sh', '-c', script],
      { cwd: HOME, stdio: ['ignore', 'pipe', 'pipe'], env: { LC_ALL: 'C', PATH: process.env.PATH } }
    );
    return { ok: true, stderr: '' };
  } catch (e) {
    return { ok: false, stderr: String(e.stderr) };
  }
}

const seen = { steps: {}, log: [] };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync'
  ]
});
const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
try {
  page.on('console', (m) => {
    if (m.type() === 'error') seen.log.push(m.text());
  });
  let polls = 0;
  page.on('response', (r) => {
    if (r.url().includes('/hubfs/quota')) polls++;
  });
  /** Waits until `n` more answers of GET hubfs/quota have arrived. */
  const morePolls = async (n) => {
    const target = polls + n;
    const deadline = Date.now() + 60000;
    while (polls < target && Date.now() < deadline) await page.waitForTimeout(50);
  };
  const status = page.locator('#jp-hubfs-quota');
  const statusOf = async () => ({
    text: (await status.textContent()).trim(),
    classes: (await status.getAttribute('class')).split(/\s+/).filter((c) => c.startsWith('jp-hubfs-quota-')),
    level: await status.getAttribute('data-level')
  });
  /** Waits until the status bar says `text` (the home's figure changed). */
  const waitText = async (text) => {
    await page.waitForFunction(
      (t) => document.querySelector('#jp-hubfs-quota')?.textContent.trim() === t,
      text,
      { timeout: 60000 }
    );
    return statusOf();
  };
  const toasts = async (needle) =>
    page.locator('.Toastify__toast', { hasText: needle }).count();

  await page.goto(LAB_URL, { waitUntil: 'domcontentloaded', timeout: 120000 });
  await status.waitFor({ timeout: 120000 });
  await page.waitForFunction(
    () => /^Home /.test(document.querySelector('#jp-hubfs-quota')?.textContent ?? ''),
    null,
    { timeout: 60000 }
  );

  // ~10 %
  asUser('mkdir -p data && head -c 2097152 /dev/zero > data/small.bin');
  seen.steps.ten = await waitText('Home 2 of 20 MiB');
  await morePolls(2);
  seen.steps.ten.toasts = await toasts('Your home');
  await page.screenshot({ path: path.join(SHOTS, 'lab-quota-10.png') });

  // ~85 %: over the warning line (80 %).
  asUser('mkdir -p big && head -c 10485760 /dev/zero > big/a.bin && head -c 5242880 /dev/zero > big/b.bin');
  seen.steps.warning = await waitText('Home 17 of 20 MiB');
  await page.locator('.Toastify__toast', { hasText: 'warning line' }).first().waitFor({ timeout: 30000 });
  await morePolls(4); // several answers at the same level: still one notification
  seen.steps.warning.toasts = await toasts('warning line');
  seen.steps.warning.toast = (await page.locator('.Toastify__toast', { hasText: 'warning line' }).first().textContent()).trim();
  await page.screenshot({ path: path.join(SHOTS, 'lab-quota-85.png') });

  // 100 %: write until "Disk quota exceeded".
  const dd = asUser('dd if=/dev/zero of=big/c.bin bs=64k count=1000');
  seen.steps.full = { dd };
  await page.waitForFunction(
    () => document.querySelector('#jp-hubfs-quota')?.dataset.level === 'full',
    null,
    { timeout: 60000 }
  );
  Object.assign(seen.steps.full, await statusOf());
  await page.locator('.Toastify__toast', { hasText: 'is full' }).first().waitFor({ timeout: 30000 });
  await morePolls(3);
  seen.steps.full.toasts = await toasts('is full');
  seen.steps.full.warningToasts = await toasts('warning line');
  await page.screenshot({ path: path.join(SHOTS, 'lab-quota-100.png') });

  // "What uses my space?", opened from the status bar.
  await status.click();
  const rows = page.locator('.jp-hubfs-space-row');
  await rows.first().waitFor({ timeout: 60000 });
  seen.steps.space = {
    rows: await rows.evaluateAll((rs) =>
      rs.map((r) => ({
        name: r.dataset.name,
        kind: r.dataset.kind,
        size: r.querySelector('.jp-hubfs-space-size').textContent
      }))
    ),
    foot: await page.locator('.jp-hubfs-space-foot').textContent()
  };
  // Open the biggest folder, then come back up.
  await page.locator('.jp-hubfs-space-row[data-name="big"] .jp-hubfs-space-open').click();
  await page.waitForFunction(
    () => document.querySelector('.jp-hubfs-space-row')?.dataset.name === 'c.bin' ||
      document.querySelector('.jp-hubfs-space-row')?.dataset.name === 'a.bin',
    null,
    { timeout: 60000 }
  );
  seen.steps.space.inside = await rows.evaluateAll((rs) => rs.map((r) => r.dataset.name));
  await page.screenshot({ path: path.join(SHOTS, 'lab-quota-space.png') });
  await page.locator('.jp-hubfs-space-crumb', { hasText: 'Home' }).click();
  await page.locator('.jp-hubfs-space-row[data-name="big"]').waitFor({ timeout: 60000 });

  // Delete the biggest folder from the panel.
  await page.locator('.jp-hubfs-space-row[data-name="big"] .jp-hubfs-space-delete').click();
  await page.locator('.jp-Dialog .jp-mod-warn').click();
  await page.locator('.jp-hubfs-space-row[data-name="big"]').waitFor({ state: 'detached', timeout: 60000 });
  await page.waitForFunction(
    () => document.querySelector('#jp-hubfs-quota')?.dataset.level === 'ok',
    null,
    { timeout: 60000 }
  );
  seen.steps.deleted = await statusOf();
  seen.steps.deleted.rows = await rows.evaluateAll((rs) => rs.map((r) => r.dataset.name));
  await morePolls(2);
  seen.steps.deleted.toasts = await toasts('back under');
  await page.screenshot({ path: path.join(SHOTS, 'lab-quota-after-delete.png') });
} catch (e) {
  // What the page showed when it went wrong, for the test's message.
  await page.screenshot({ path: path.join(SHOTS, 'failure.png') }).catch(() => {});
  const panel = await page.locator('#jp-hubfs-space').textContent().catch(() => null);
  process.stderr.write(`screenshot: ${path.join(SHOTS, 'failure.png')}\npanel: ${panel}\nseen: ${JSON.stringify(seen)}\n`);
  throw e;
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(seen) + '\n');
