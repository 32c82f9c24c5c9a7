// The web builder's entry point: session, header, hash routes (#/new, #/builds, #/builds/<id>,
// #/tokens) and the login and token pages.
import { api, failure, getSession, login, logout, setUnauthorizedHandler } from './api.js';
import { h, field, fill, copyText, formatTime } from './dom.js';
import { showWizard, loadRequest, resetWizard } from './wizard.js';
import { showBuilds, showBuild } from './builds.js';

const main = document.getElementById('main');
let session = null;
let leaving = []; // what to stop when the view changes (timers, event streams)
let flash = null; // a message for the next view

// What the views share: where to draw, what to stop on leaving, cloning a build.
const view = {
  main,
  onLeave(fn) {
    leaving.push(fn);
  },
  async clone(id) {
    const request = await api('GET', `/builds/${encodeURIComponent(id)}/spec`);
    loadRequest(request);
    if (location.hash === '#/new') route();
    else location.hash = '#/new';
  },
  takeFlash() {
    const f = flash;
    flash = null;
    return f;
  },
};

function route() {
  for (const stop of leaving.splice(0)) stop();
  updateHeader();
  if (!session) {
    showLogin();
    return;
  }
  const path = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean);
  if (!path.length) {
    location.replace('#/new');
    return;
  }
  const [page, id] = path;
  if (page === 'new') showWizard(main, onBuilt);
  else if (page === 'builds' && id) showBuild(id, view);
  else if (page === 'builds') showBuilds(view);
  else if (page === 'tokens') showTokens();
  else fill(main, h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/new' }, 'Start a new build')));
}

function onBuilt(build) {
  resetWizard();
  flash = build.reused ? 'This spec was already built or is building — reusing it.' : 'Build queued.';
  location.hash = `#/builds/${build.id}`;
}

function updateHeader() {
  const top = document.getElementById('top');
  top.hidden = !session;
  if (!session) return;
  const user = session.user || {};
  document.getElementById('user-name').textContent = user.role === 'admin' ? `${user.name} (admin)` : user.name || '';
  const page = location.hash.replace(/^#\/?/, '').split('/')[0] || 'new';
  for (const a of top.querySelectorAll('nav a')) {
    if (a.dataset.route === page) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

// ---- login ----

function showLogin() {
  const token = h('input', { type: 'password', testid: 'login-token', autocomplete: 'current-password', required: true, spellcheck: 'false' });
  const error = h('p', { class: 'error', role: 'alert', testid: 'login-error', hidden: true });
  const submit = h('button', { type: 'submit', class: 'primary', testid: 'login-submit' }, 'Log in');
  const form = h('form', {
    class: 'login',
    onsubmit: async (e) => {
      e.preventDefault();
      error.hidden = true;
      if (!token.value.trim()) {
        error.textContent = 'Give a login token or an API token.';
        error.hidden = false;
        return;
      }
      submit.disabled = true;
      try {
        session = await login(token.value.trim());
        route();
      } catch (err) {
        error.textContent = failure('log in', err);
        error.hidden = false;
        submit.disabled = false;
      }
    },
  },
  h('h1', {}, 'Log in to pok8s'),
  field('Token', token, 'The one-time login token pok8s serve printed on its first start, or one of your API tokens.'),
  submit, error);
  fill(main, form);
  token.focus();
}

document.getElementById('logout').addEventListener('click', async () => {
  try {
    await logout();
  } catch {
    // the session is gone either way
  }
  session = null;
  route();
});

// ---- API tokens ----

async function showTokens() {
  const error = h('p', { class: 'error', role: 'alert', testid: 'tokens-error', hidden: true });
  const fail = (what, e) => {
    error.textContent = failure(what, e);
    error.hidden = false;
  };
  const list = h('tbody', {});
  const secret = h('div', { testid: 'token-created', hidden: true, class: 'notice' });
  const name = h('input', { type: 'text', testid: 'token-name', maxlength: 64, required: true, placeholder: 'ci' });
  const create = h('form', {
    class: 'inline',
    onsubmit: async (e) => {
      e.preventDefault();
      error.hidden = true;
      if (!name.value.trim()) return fail('create a token', new Error('give it a name'));
      try {
        const t = await api('POST', '/tokens', { name: name.value.trim() });
        name.value = '';
        const value = h('input', { type: 'text', readonly: true, testid: 'token-secret', value: t.token, 'aria-label': 'The new token' });
        const copied = h('span', { class: 'muted', 'aria-live': 'polite' });
        fill(secret,
          h('p', {}, h('strong', {}, `Token "${t.name}" created.`), ' Copy it now: it is shown only once.'),
          h('div', { class: 'buttons' }, value,
            h('button', { type: 'button', testid: 'token-copy', onclick: async () => { copied.textContent = (await copyText(t.token)) ? 'Copied.' : 'Copy failed: select the text instead.'; } }, 'Copy'),
            copied),
          h('p', { class: 'hint' }, 'Use it as: Authorization: Bearer TOKEN'));
        secret.hidden = false;
        await refresh();
      } catch (err) {
        fail('create a token', err);
      }
    },
  }, field('New token name', name), h('button', { type: 'submit', class: 'primary', testid: 'token-create' }, 'Create token'));

  async function refresh() {
    try {
      const r = await api('GET', '/tokens');
      const tokens = r.tokens || [];
      fill(list, ...(tokens.length ? tokens.map((t) => h('tr', { testid: `token-row-${t.id}` },
        h('td', {}, t.name), h('td', {}, formatTime(t.createdAt)), h('td', {}, t.lastUsedAt ? formatTime(t.lastUsedAt) : 'never'),
        h('td', {}, h('button', { type: 'button', class: 'link danger', testid: `token-revoke-${t.id}`, onclick: async () => {
          error.hidden = true;
          try {
            await api('DELETE', `/tokens/${encodeURIComponent(t.id)}`);
            await refresh();
          } catch (err) {
            fail(`revoke ${t.name}`, err);
          }
        } }, 'Revoke')))) : [h('tr', {}, h('td', { colspan: 4, class: 'muted' }, 'No API tokens yet.'))]));
    } catch (err) {
      fail('list the tokens', err);
    }
  }

  fill(main,
    h('h1', {}, 'API tokens'),
    h('p', { class: 'hint' }, 'Tokens let scripts and the CLI call the API as you.'),
    create, secret, error,
    h('table', { testid: 'tokens-table' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Name'), h('th', {}, 'Created'), h('th', {}, 'Last used'), h('th', {}, h('span', { class: 'offscreen' }, 'Actions')))),
      list));
  await refresh();
}

// ---- start ----

async function start() {
  setUnauthorizedHandler(() => {
    if (!session) return;
    session = null;
    route();
  });
  try {
    session = await getSession();
  } catch (e) {
    fill(main, h('p', { class: 'error', role: 'alert', testid: 'start-error' }, failure('reach the pok8s server', e)));
    return;
  }
  window.addEventListener('hashchange', route);
  route();
}

start();
