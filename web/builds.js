// The build history (#/builds) and one build (#/builds/<id>): live progress and log over
// Server-Sent Events, cancel, artifacts to download, clone and edit.
import { api, failure, getBuildLog } from './api.js';
import { h, clear, fill, formatBytes, formatTime } from './dom.js';

const ACTIVE = ['queued', 'running'];
const HISTORY_REFRESH_MS = 3000;
const POLL_MS = 2000;
const MAX_LOG_LINES = 20000;

function stateBadge(state, testid) {
  return h('span', { class: `badge state-${state}`, testid }, state || 'unknown');
}

// ---- history ----

export async function showBuilds(view) {
  const error = h('p', { class: 'error', role: 'alert', testid: 'builds-error', hidden: true });
  const body = h('tbody', {});
  const count = h('p', { class: 'hint', testid: 'builds-count' });
  let timer = null;
  let left = false;
  view.onLeave(() => {
    left = true;
    clearTimeout(timer);
  });

  const clone = async (id, button) => {
    button.disabled = true;
    error.hidden = true;
    try {
      await view.clone(id);
    } catch (e) {
      error.textContent = failure(`load the spec of ${id}`, e);
      error.hidden = false;
      button.disabled = false;
    }
  };

  async function refresh() {
    let active = false;
    try {
      const r = await api('GET', '/builds?limit=100');
      if (left) return;
      const builds = r.builds || [];
      active = builds.some((b) => ACTIVE.includes(b.state));
      error.hidden = true;
      count.textContent = builds.length < (r.total ?? builds.length) ? `The newest ${builds.length} of ${r.total} builds.` : `${builds.length} build${builds.length === 1 ? '' : 's'}.`;
      fill(body, ...(builds.length ? builds.map((b) => {
        const cloneButton = h('button', { type: 'button', class: 'link', testid: `clone-build-${b.id}`, onclick: () => clone(b.id, cloneButton) }, 'Clone and edit');
        return h('tr', { testid: `build-row-${b.id}` },
          h('td', { class: 'nowrap' }, h('a', { href: `#/builds/${b.id}`, testid: `build-link-${b.id}` }, h('code', {}, b.id))),
          h('td', {}, stateBadge(b.state, `build-state-${b.id}`),
            ACTIVE.includes(b.state) && typeof b.progress === 'number' ? h('small', { class: 'muted' }, ` ${Math.round(b.progress * 100)} %`) : null),
          h('td', {}, h('code', {}, b.base || '')),
          h('td', {}, b.version || ''),
          h('td', {}, b.kubernetes || ''),
          h('td', {}, formatTime(b.createdAt)),
          h('td', {}, cloneButton));
      }) : [h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No builds yet. ', h('a', { href: '#/new' }, 'Start one.')))]));
    } catch (e) {
      if (left) return;
      error.textContent = failure('list the builds', e);
      error.hidden = false;
      active = true; // try again
    }
    if (active && !left) timer = setTimeout(refresh, HISTORY_REFRESH_MS);
  }

  fill(view.main,
    h('h1', {}, 'Builds'),
    error,
    h('table', { testid: 'builds-table' },
      h('thead', {}, h('tr', {}, ['Build', 'State', 'Base', 'Version', 'Kubernetes', 'Created'].map((t) => h('th', {}, t)),
        h('th', {}, h('span', { class: 'offscreen' }, 'Actions')))),
      body),
    count);
  await refresh();
}

// ---- one build ----

export async function showBuild(id, view) {
  const flash = view.takeFlash();
  let left = false;
  let events = null;
  let pollTimer = null;
  let flushTimer = null;
  view.onLeave(() => {
    left = true;
    if (events) events.close();
    clearTimeout(pollTimer);
    clearTimeout(flushTimer);
  });

  const state = h('span', {});
  const progress = h('progress', { max: 1, value: 0, testid: 'build-progress', 'aria-label': 'Build progress' });
  const percent = h('span', { class: 'muted', testid: 'build-percent' });
  const step = h('span', { testid: 'build-step' });
  const meta = h('dl', { class: 'summary', testid: 'build-meta' });
  const actionError = h('p', { class: 'error', role: 'alert', testid: 'build-action-error', hidden: true });
  const buildError = h('p', { class: 'error', role: 'alert', testid: 'build-error-message', hidden: true });
  const artifacts = h('div', { testid: 'build-artifacts' });
  const log = h('pre', { class: 'log', testid: 'build-log', tabindex: 0, 'aria-label': 'Build log' });
  const cancel = h('button', { type: 'button', class: 'danger', testid: 'cancel-build', hidden: true, onclick: () => doCancel() }, 'Cancel build');
  const clone = h('button', { type: 'button', testid: 'clone-build', onclick: () => doClone() }, 'Clone and edit');
  // "Build queued." and the like say what just happened; they go once the build moves on.
  const flashNote = flash ? h('p', { class: 'notice', testid: 'flash' }, flash) : null;
  let record = null;
  let logLines = 0;
  let pending = [];

  fill(view.main,
    h('h1', {}, 'Build ', h('code', {}, id), ' ', state),
    flashNote,
    h('div', { class: 'progress' }, progress, ' ', percent, ' ', step),
    h('div', { class: 'buttons' }, cancel, clone, h('a', { href: '#/builds' }, 'All builds')),
    actionError, buildError, meta, artifacts,
    h('h2', {}, 'Log'), log);

  // Log lines are added in batches: a build can print thousands of lines a second.
  function addLog(line, cls) {
    pending.push([line, cls]);
    if (!flushTimer) flushTimer = setTimeout(flushLog, 100);
  }
  function flushLog() {
    flushTimer = null;
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
    const frag = document.createDocumentFragment();
    for (const [line, cls] of pending.splice(0)) {
      frag.append(cls ? h('span', { class: cls }, line + '\n') : document.createTextNode(line + '\n'));
      logLines += 1;
    }
    log.append(frag);
    while (logLines > MAX_LOG_LINES && log.firstChild) {
      log.firstChild.remove();
      logLines -= 1;
    }
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function setProgress(value, text) {
    if (typeof value === 'number') {
      progress.value = Math.max(0, Math.min(1, value));
      percent.textContent = `${Math.round(progress.value * 100)} %`;
    }
    if (text !== undefined && text !== null) step.textContent = text;
  }

  function showState(s) {
    fill(state, stateBadge(s, 'build-state'));
    if (flashNote && flash === 'Build queued.' && s !== 'queued') flashNote.remove();
    cancel.hidden = !ACTIVE.includes(s) || !!(record && record.cancelRequested);
  }

  function showRecord(b) {
    record = b;
    showState(b.state);
    setProgress(b.state === 'succeeded' ? 1 : b.progress, b.step || '');
    const rows = [['Base', b.base], ['Version', b.version], ['Kubernetes', b.kubernetes], ['Artifacts', (b.artifactKinds || []).join(', ')],
      ['Owner', b.owner], ['Created', formatTime(b.createdAt)], ['Started', formatTime(b.startedAt)], ['Finished', formatTime(b.finishedAt)],
      ['Attempts', b.attempts], ['Spec id', b.specId && b.specId !== b.id ? b.specId : null]];
    fill(meta, ...rows.filter(([, v]) => v !== undefined && v !== null && v !== '').map(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))]));
    buildError.hidden = !b.error;
    buildError.textContent = !b.error ? '' : b.state === 'failed' ? `The build failed: ${b.error}` : b.state === 'canceled' ? `Canceled: ${b.error}` : b.error;
    if (b.cancelRequested && ACTIVE.includes(b.state)) step.textContent = 'Cancellation requested…';
    clear(artifacts);
    if (b.state === 'succeeded' && b.artifacts && b.artifacts.length) {
      artifacts.append(h('h2', {}, 'Artifacts'), h('ul', { class: 'artifacts' }, b.artifacts.map((a) => h('li', {},
        h('a', { href: a.url, download: a.name, testid: `artifact-link-${a.name}` }, a.name),
        ' ', h('span', { class: 'muted' }, formatBytes(a.size)),
        a.sha256 ? h('div', {}, h('small', {}, 'sha256 '), h('code', { class: 'hash', testid: `artifact-sha256-${a.name}` }, a.sha256)) : null))));
    }
  }

  async function reload() {
    const b = await api('GET', `/builds/${encodeURIComponent(id)}`);
    if (!left) showRecord(b);
    return b;
  }

  function finished() {
    if (events) {
      events.close();
      events = null;
    }
    reload().catch((e) => showActionError('reload the build', e));
  }

  // The event stream; when the browser gives up on it (it retries by itself with Last-Event-ID
  // while the server is reachable), the record is polled instead.
  function follow() {
    events = new EventSource(`/api/v1/builds/${encodeURIComponent(id)}/events`);
    const on = (name, fn) => events.addEventListener(name, (e) => {
      let data = {};
      try {
        data = JSON.parse(e.data);
      } catch {
        return;
      }
      fn(data);
    });
    on('state', (d) => {
      if (record) record.state = d.state;
      showState(d.state);
      if (d.error) {
        buildError.textContent = d.state === 'failed' ? `The build failed: ${d.error}` : d.error;
        buildError.hidden = false;
      }
    });
    on('step', (d) => {
      step.textContent = d.text || '';
      if (d.text) addLog(`▶ ${d.text}`, 'log-step');
    });
    on('log', (d) => addLog(String(d.line ?? '')));
    on('progress', (d) => setProgress(d.progress, d.step));
    on('end', () => finished());
    events.onerror = () => {
      if (events && events.readyState === EventSource.CLOSED) {
        events = null;
        poll();
      }
    };
  }

  async function poll() {
    if (left) return;
    try {
      const b = await reload();
      if (!ACTIVE.includes(b.state)) {
        await loadLog();
        return;
      }
    } catch (e) {
      showActionError('reload the build', e);
    }
    pollTimer = setTimeout(poll, POLL_MS);
  }

  async function loadLog() {
    try {
      const text = await getBuildLog(id);
      if (left) return;
      clear(log);
      logLines = 0;
      pending = [];
      for (const line of text.replace(/\n$/, '').split('\n')) if (line) addLog(line);
    } catch (e) {
      showActionError('read the log', e);
    }
  }

  function showActionError(what, e) {
    actionError.textContent = failure(what, e);
    actionError.hidden = false;
  }

  async function doCancel() {
    cancel.disabled = true;
    actionError.hidden = true;
    try {
      const b = await api('POST', `/builds/${encodeURIComponent(id)}/cancel`);
      if (!left && b && b.id) showRecord(b);
    } catch (e) {
      showActionError('cancel the build', e);
    } finally {
      cancel.disabled = false;
    }
  }

  async function doClone() {
    clone.disabled = true;
    actionError.hidden = true;
    try {
      await view.clone(id);
    } catch (e) {
      showActionError('load the spec', e);
      clone.disabled = false;
    }
  }

  let b;
  try {
    b = await reload();
  } catch (e) {
    if (!left) showActionError(`load build ${id}`, e);
    return;
  }
  if (left) return;
  if (ACTIVE.includes(b.state)) follow();
  else await loadLog();
}
