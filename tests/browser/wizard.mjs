#!/usr/bin/env node
// Drives the whole web builder in Debian's chromium against a running `pok8s serve`: log in, fill
// every wizard step, build, follow the build page, download the ISO and check its sha256 against
// the build's manifest, then clone the build from the history back into the wizard.
//
// Environment:
//   POK8S_URL              the server, e.g. http://127.0.0.1:18080 (required)
//   POK8S_LOGIN_TOKEN      the one-time login token (or an API token) (required)
//   POK8S_TEMPLATE         the template to pick (default: the first one the server lists)
//   POK8S_K8S_BINARY_URL   a k3s binary served on 127.0.0.1 (required)
//   POK8S_K8S_SHA256       its sha256 (required)
//   POK8S_DOWNLOAD_DIR     where downloads and failure.png go (default: a new temporary directory)
//   POK8S_BUILD_TIMEOUT_S  how long the build may take (default 1500)
//   POK8S_CHROMIUM         the browser (default /usr/bin/chromium)
import { chromium } from 'playwright-core';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';

const OS_VERSION = 'v0.3.0';
const K3S_VERSION = 'v1.31.2+k3s1';
const CLUSTER = { server: 'https://10.0.0.1:6443', token: 'K10abc::server:secret', caHash: 'a'.repeat(64) };
const MANIFEST_NAME = 'browser-test.yaml';
const MANIFEST = 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: browser-test\n  namespace: default\ndata:\n  greeting: hello from the web builder\n';
// An unknown key: the strict cloud-config reader names its line.
const BROKEN_CLOUD_CONFIG = '#cloud-config\nhostname: browser-node\nusers: {}\n';
const CLOUD_CONFIG = '#cloud-config\nhostname: browser-node\n';

class Failure extends Error {}

function fail(reason) {
  throw new Failure(reason);
}

function required(name) {
  const value = process.env[name];
  if (!value) fail(`${name} is not set`);
  return value;
}

let stepNo = 0;
function say(text) {
  stepNo += 1;
  console.log(`[${String(stepNo).padStart(2, '0')}] ${text}`);
}

function sha256File(file) {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(file).on('data', (d) => hash.update(d)).on('error', reject).on('end', () => resolve(hash.digest('hex')));
  });
}

// Waits until the element's text matches `re`; fails naming `what` and the last text seen.
async function waitForText(locator, re, what, timeoutMs = 20_000) {
  const end = Date.now() + timeoutMs;
  let text = '';
  while (Date.now() < end) {
    text = ((await locator.textContent({ timeout: 1000 }).catch(() => null)) || '').trim();
    if (re.test(text)) return text;
    await new Promise((r) => setTimeout(r, 200));
  }
  fail(`${what}: expected text matching ${re}, saw "${text.slice(0, 200)}"`);
}

// Clicks Next and checks the wizard moved on (else reports the step's error message).
async function next(page, expectedTitle) {
  await page.getByTestId('next').click();
  const title = page.locator('#step-title');
  const end = Date.now() + 30_000;
  while (Date.now() < end) {
    if (new RegExp(expectedTitle).test((await title.textContent()) || '')) return;
    const error = page.getByTestId('step-error');
    if (await error.isVisible()) fail(`the wizard refused to go on to ${expectedTitle}: ${(await error.textContent()).trim()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  fail(`the wizard did not reach the ${expectedTitle} step`);
}

// Waits for `success` unless the error element `errorLocator` shows first: then fails with its text.
async function unlessError(success, errorLocator, prefix, timeoutMs) {
  success.catch(() => {}); // awaited below; this only keeps a late rejection from going unhandled
  const error = errorLocator.waitFor({ state: 'visible', timeout: timeoutMs })
    .then(async () => `${prefix}: ${((await errorLocator.textContent()) || '').trim()}`, () => null);
  const message = await Promise.race([success.then(() => null), error.then((m) => m || success.then(() => null))]);
  if (message) fail(message);
}

async function download(page, clickable, dir, name) {
  const [dl] = await Promise.all([page.waitForEvent('download', { timeout: 600_000 }), clickable.click()]);
  const failure = await dl.failure();
  if (failure) fail(`Failed to download ${name || dl.suggestedFilename()}: ${failure}`);
  const file = path.join(dir, name || dl.suggestedFilename());
  await dl.saveAs(file);
  return file;
}

async function run(page, config) {
  const { url, dir } = config;
  const api = async (p) => {
    const r = await page.request.get(url + p);
    if (!r.ok()) fail(`GET ${p} answered HTTP ${r.status()}: ${(await r.text()).slice(0, 200)}`);
    return r.json();
  };

  say(`Opening ${url}`);
  await page.goto(url + '/');
  await page.getByTestId('login-token').waitFor();

  say('Logging in with the login token');
  await page.getByTestId('login-token').fill(config.loginToken);
  await page.getByTestId('login-submit').click();
  await unlessError(page.getByTestId('user-name').waitFor({ state: 'visible' }), page.getByTestId('login-error'), 'login refused', 30_000);
  console.log(`     logged in as ${(await page.getByTestId('user-name').textContent()).trim()}`);

  const capabilities = await api('/api/v1/capabilities');
  const templates = (await api('/api/v1/templates')).templates || [];
  const template = config.template || (templates[0] && templates[0].name);
  if (!template) fail('the server lists no template and POK8S_TEMPLATE is not set');
  if (!templates.some((t) => t.name === template)) fail(`template ${template} is not among ${templates.map((t) => t.name).join(', ')}`);

  say(`Base: template ${template}, version ${OS_VERSION}`);
  await page.getByTestId('nav-new').click();
  await page.getByTestId('wizard-reset').click();
  await page.getByTestId(`template-${template}`).check();
  await page.getByTestId('os-version').fill(OS_VERSION);
  await next(page, 'Kubernetes');

  say(`Kubernetes: k3s ${K3S_VERSION}, binary ${config.binaryUrl}`);
  await page.getByTestId('k8s-k3s').check();
  await page.getByTestId('k8s-version').fill(K3S_VERSION);
  const prefilled = await page.getByTestId('k8s-binary').inputValue();
  const expected = `https://github.com/k3s-io/k3s/releases/download/${encodeURIComponent(K3S_VERSION)}/k3s`;
  if (prefilled !== expected) fail(`the k3s binary URL was prefilled as "${prefilled}", expected "${expected}"`);
  await page.getByTestId('k8s-binary').fill(config.binaryUrl);
  await page.getByTestId('k8s-sha256').fill(config.binarySha256);
  await next(page, 'Toppings');

  say('Toppings: package jq, one ConfigMap manifest, cluster join');
  await page.getByTestId('packages').fill('jq');
  await page.getByTestId('add-manifest').click();
  await page.getByTestId('manifest-name-0').fill(MANIFEST_NAME);
  await page.getByTestId('manifest-content-0').fill(MANIFEST);
  await page.getByTestId('cluster-enabled').check();
  await page.getByTestId('cluster-server').fill(CLUSTER.server);
  await page.getByTestId('cluster-token').fill(CLUSTER.token);
  await page.getByTestId('cluster-ca-hash').fill(CLUSTER.caHash);
  await next(page, 'Security');

  say('Security: defaults (unbuildable options are disabled)');
  if (capabilities.trustedBoot && capabilities.trustedBoot.buildable === false) {
    if (!(await page.getByTestId('trusted-boot').isDisabled())) fail('trusted boot is unbuildable but its checkbox is enabled');
    await waitForText(page.getByTestId('trusted-boot-reason'), /\S/, 'the reason trusted boot is unbuildable');
  }
  await next(page, 'Artifacts');

  const unbuildable = (capabilities.artifacts || []).find((a) => a.buildable === false);
  if (unbuildable) {
    say(`Artifacts: ${unbuildable.name} is disabled with its reason shown`);
    if (!(await page.getByTestId(`artifact-${unbuildable.name}`).isDisabled())) fail(`artifact ${unbuildable.name} is unbuildable but its checkbox is enabled`);
    const reason = await waitForText(page.getByTestId(`artifact-reason-${unbuildable.name}`), /\S/, `the reason ${unbuildable.name} is unbuildable`);
    console.log(`     ${unbuildable.name}: ${reason}`);
  } else {
    say('Artifacts: the server reports every artifact as buildable, nothing to find disabled');
  }
  say('Artifacts: iso');
  await page.getByTestId('artifact-iso').check();
  await next(page, 'Cloud-config');

  say('Cloud-config: a broken document shows the line of its error');
  const status = page.getByTestId('cloud-config-status');
  await page.getByTestId('cloud-config').fill(BROKEN_CLOUD_CONFIG);
  const error = await waitForText(status, /line\s*\d+/i, 'the cloud-config error');
  console.log(`     ${error}`);
  say('Cloud-config: a valid document shows "valid"');
  await page.getByTestId('cloud-config').fill(CLOUD_CONFIG);
  await waitForText(status, /^\W*valid$/i, 'the cloud-config verdict');
  await next(page, 'Review');

  say('Review: the server checks the spec');
  const verdict = await Promise.race([
    page.getByTestId('review-spec-id').waitFor({ timeout: 300_000 }).then(() => 'valid'),
    page.getByTestId('review-error').waitFor({ timeout: 300_000 }).then(() => 'refused'),
  ].map((p) => p.catch(() => 'timeout')));
  if (verdict === 'timeout') fail('the review showed neither a build id nor an error');
  if (verdict === 'refused') {
    // The engine refuses manifests on a node that joins a cluster as an agent: the reason must
    // show in the Review step; then the join is dropped and the manifest kept.
    const reason = (await page.getByTestId('review-error').textContent()).trim();
    if (!/toppings/.test(reason)) fail(`the spec was refused: ${reason}`);
    console.log(`     refused as expected with a cluster join and a manifest: ${reason}`);
    say('Toppings: back through the step indicator, dropping the cluster join');
    await page.getByTestId('step-3').click();
    await page.getByTestId('cluster-enabled').uncheck();
    for (const title of ['Security', 'Artifacts', 'Cloud-config', 'Review']) await next(page, title);
    await unlessError(page.getByTestId('review-spec-id').waitFor({ timeout: 300_000 }), page.getByTestId('review-error'), 'the spec was refused', 300_000);
  }
  const specId = (await page.getByTestId('review-spec-id').textContent()).trim();
  if (!/^[0-9a-f]{16}$/.test(specId)) fail(`the build id "${specId}" is not 16 hex digits`);
  const yaml = await page.getByTestId('review-yaml').textContent();
  if (!yaml.includes('k3s')) fail('the reviewed spec YAML does not mention k3s');
  if (await page.getByTestId('review-unbuildable').count()) fail(`the spec is reported unbuildable: ${await page.getByTestId('review-unbuildable').textContent()}`);
  console.log(`     build id ${specId}`);
  say('Review: downloading spec.yaml and cloud-config.yaml');
  const specFile = await download(page, page.getByTestId('download-spec'), dir, 'spec.yaml');
  if (!(await readFile(specFile, 'utf8')).includes('apiVersion: pok8s/v1')) fail('the downloaded spec.yaml lacks "apiVersion: pok8s/v1"');
  const ccFile = await download(page, page.getByTestId('download-file-cloud-config.yaml'), dir, 'cloud-config.yaml');
  if ((await readFile(ccFile, 'utf8')) !== CLOUD_CONFIG) fail('the downloaded cloud-config.yaml differs from the one typed');
  await next(page, 'Build');

  say('Build: queueing it');
  await page.getByTestId('build-submit').click();
  await unlessError(page.waitForURL(/#\/builds\/[0-9a-f]{16}$/, { timeout: 60_000 }), page.getByTestId('build-error'), 'the build was refused', 60_000);
  const buildId = page.url().split('/').pop();
  // The "Build queued." note goes away as soon as the build starts, which may be at once.
  const flashText = await page.getByTestId('flash').textContent({ timeout: 1000 }).catch(() => null);
  console.log(`     build ${buildId}${flashText ? `: ${flashText.trim()}` : ''}`);

  say(`Build page: following it (up to ${config.timeoutS} s)`);
  await page.getByTestId('build-progress').waitFor();
  const end = Date.now() + config.timeoutS * 1000;
  let last = '';
  let maxLogLines = 0;
  for (;;) {
    const state = ((await page.getByTestId('build-state').textContent({ timeout: 5000 }).catch(() => '')) || '').trim();
    const value = await page.getByTestId('build-progress').evaluate((p) => p.value).catch(() => null);
    if (value === null) fail('the progress bar is gone from the build page');
    const stepText = ((await page.getByTestId('build-step').textContent().catch(() => '')) || '').trim();
    const logLines = await page.getByTestId('build-log').evaluate((p) => p.textContent.split('\n').filter(Boolean).length);
    maxLogLines = Math.max(maxLogLines, logLines);
    const line = `${state} ${Math.round(value * 100)} % ${stepText}`;
    if (line !== last) {
      console.log(`     ${line} (${logLines} log lines)`);
      last = line;
    }
    if (state === 'succeeded') break;
    if (state === 'failed' || state === 'canceled') {
      const message = page.getByTestId('build-error-message');
      fail(`the build ${state}: ${(await message.isVisible()) ? (await message.textContent()).trim() : 'no error shown'}`);
    }
    if (Date.now() > end) fail(`the build did not finish within ${config.timeoutS} s (state ${state}, ${Math.round(value * 100)} %)`);
    await new Promise((r) => setTimeout(r, 1000));
  }
  if (!maxLogLines) {
    // A build that had already finished has its log read once, within a moment.
    await waitForText(page.getByTestId('build-log'), /\S/, 'the build log');
    maxLogLines = await page.getByTestId('build-log').evaluate((p) => p.textContent.split('\n').filter(Boolean).length);
  }
  console.log(`     succeeded; the log showed ${maxLogLines} lines`);

  say('Artifacts: downloading the ISO through its link');
  const links = page.locator('[data-testid^="artifact-link-"]');
  await links.first().waitFor().catch(() => fail('the succeeded build shows no artifact links'));
  const names = await links.evaluateAll((as) => as.map((a) => a.dataset.testid.slice('artifact-link-'.length)));
  const isoName = names.find((n) => n.endsWith('.iso'));
  if (!isoName) fail(`no ISO among the artifact links: ${names.join(', ')}`);
  const isoFile = await download(page, page.getByTestId(`artifact-link-${isoName}`), dir, isoName);
  const isoSha256 = await sha256File(isoFile);
  console.log(`     ${isoName}: sha256 ${isoSha256}`);

  say('Artifacts: comparing with the build manifest');
  const record = await api(`/api/v1/builds/${buildId}`);
  const manifestArtifact = (record.artifacts || []).find((a) => /manifest/.test(a.name) && a.name.endsWith('.json'));
  if (!manifestArtifact) fail(`the build lists no manifest artifact: ${(record.artifacts || []).map((a) => a.name).join(', ')}`);
  const manifestResponse = await page.request.get(new URL(manifestArtifact.url, url).toString());
  if (!manifestResponse.ok()) fail(`Failed to download ${manifestArtifact.name}: HTTP ${manifestResponse.status()}`);
  let manifest;
  try {
    manifest = JSON.parse(await manifestResponse.text());
  } catch (e) {
    fail(`${manifestArtifact.name} is not JSON: ${e.message}`);
  }
  const entry = (manifest.artifacts || []).find((a) => a.name === isoName) || (manifest.artifacts || []).find((a) => a.type === 'iso');
  if (!entry) fail(`${manifestArtifact.name} has no entry for ${isoName}`);
  if (entry.sha256 !== isoSha256) fail(`the downloaded ISO hashes to ${isoSha256}, the manifest says ${entry.sha256}`);
  const listed = (record.artifacts || []).find((a) => a.name === isoName);
  if (listed && listed.sha256 && listed.sha256 !== isoSha256) fail(`the downloaded ISO hashes to ${isoSha256}, the API lists ${listed.sha256}`);
  console.log('     the ISO matches the manifest');

  say('History: the build is listed');
  await page.getByTestId('nav-builds').click();
  await unlessError(page.getByTestId(`build-row-${buildId}`).waitFor(), page.getByTestId('builds-error'), 'the history shows an error', 30_000);
  await waitForText(page.getByTestId(`build-state-${buildId}`), /^succeeded$/, 'the build state in the history');

  say('History: clone and edit brings the spec back into the wizard');
  await page.getByTestId(`clone-build-${buildId}`).click();
  await page.getByTestId('os-version').waitFor();
  const version = await page.getByTestId('os-version').inputValue();
  if (version !== OS_VERSION) fail(`the cloned wizard shows version "${version}", expected ${OS_VERSION}`);
  if (!(await page.getByTestId(`template-${template}`).isChecked())) fail(`the cloned wizard does not have template ${template} chosen`);
  await next(page, 'Kubernetes');
  if (!(await page.getByTestId('k8s-k3s').isChecked())) fail('the cloned wizard does not have k3s chosen');
  if ((await page.getByTestId('k8s-binary').inputValue()) !== config.binaryUrl) fail('the cloned wizard lost the k3s binary URL');
  return { buildId, isoName, isoSha256 };
}

async function main() {
  let browser = null;
  let page = null;
  let dir = process.env.POK8S_DOWNLOAD_DIR || '';
  const consoleLines = [];
  try {
    const config = {
      url: required('POK8S_URL').replace(/\/+$/, ''),
      loginToken: required('POK8S_LOGIN_TOKEN'),
      template: process.env.POK8S_TEMPLATE || '',
      binaryUrl: required('POK8S_K8S_BINARY_URL'),
      binarySha256: required('POK8S_K8S_SHA256'),
      timeoutS: Number(process.env.POK8S_BUILD_TIMEOUT_S || 1500),
    };
    if (!(config.timeoutS > 0)) fail('POK8S_BUILD_TIMEOUT_S is not a positive number');
    if (dir) await mkdir(dir, { recursive: true });
    else dir = await mkdtemp(path.join(tmpdir(), 'pok8s-browser-'));
    config.dir = dir;

    browser = await chromium.launch({
      executablePath: process.env.POK8S_CHROMIUM || '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync'],
    });
    const context = await browser.newContext({ acceptDownloads: true, viewport: { width: 1280, height: 1000 } });
    page = await context.newPage();
    page.setDefaultTimeout(30_000);
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') consoleLines.push(`console.${m.type()}: ${m.text()}`);
    });
    // "Failed to load resource" names no address: the failed responses do.
    page.on('response', (r) => {
      if (r.status() >= 400) consoleLines.push(`HTTP ${r.status()} for ${r.request().method()} ${r.url()}`);
    });
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));

    const result = await run(page, config);
    if (pageErrors.length) fail(`the page threw: ${pageErrors[0]}`);
    console.log(`PASS: built ${result.buildId} in the browser; ${result.isoName} (sha256 ${result.isoSha256}) matches its manifest; downloads in ${dir}`);
    await browser.close();
    return 0;
  } catch (e) {
    if (page && dir) {
      await page.screenshot({ path: path.join(dir, 'failure.png'), fullPage: true }).catch(() => {});
    }
    for (const line of consoleLines.slice(-20)) console.error(`     ${line}`);
    if (page) console.error(`     at ${page.url()}`);
    const reason = e instanceof Failure ? e.message : `${e.name}: ${e.message.split('\n')[0]}`;
    console.error(`FAIL: ${reason.replace(/\s+/g, ' ')}${page && dir ? ` (screenshot ${path.join(dir, 'failure.png')})` : ''}`);
    if (browser) await browser.close().catch(() => {});
    return 1;
  }
}

process.exitCode = await main();
