// The pok8s REST API (/api/v1, share/pok8s/openapi.json) as seen from the browser: the session
// cookie authenticates, every POST/DELETE carries the session's CSRF token.

let csrfToken = null;
let onUnauthorized = () => {};

// An API error: `message` is the server's one-line message, `kind` its error kind.
export class ApiError extends Error {
  constructor(status, kind, message) {
    super(message);
    this.status = status;
    this.kind = kind;
  }
}

// Called when a request other than the login itself answers 401 (the session has ended).
export function setUnauthorizedHandler(handler) {
  onUnauthorized = handler;
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    if (csrfToken) headers['X-CSRF-Token'] = csrfToken;
  }
  let response;
  try {
    response = await fetch('/api/v1' + path, {
      method,
      headers,
      credentials: 'same-origin',
      body: body === undefined ? (method === 'GET' ? undefined : '{}') : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'io', `Failed to reach the server: ${e.message}`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const err = data && data.error;
    const message = err && err.message ? err.message : `${method} ${path} failed: HTTP ${response.status}`;
    if (response.status === 401 && path !== '/session') onUnauthorized();
    throw new ApiError(response.status, err ? err.kind : 'internal', message);
  }
  if (data === null && text) throw new ApiError(response.status, 'format', `${method} ${path}: the answer is not JSON`);
  return data;
}

// The session, or null when not logged in.
export async function getSession() {
  try {
    const s = await api('GET', '/session');
    csrfToken = s.csrfToken || null;
    return s;
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

export async function login(token) {
  const s = await api('POST', '/session', { token });
  csrfToken = s.csrfToken || null;
  return s;
}

export async function logout() {
  try {
    await api('DELETE', '/session');
  } finally {
    csrfToken = null;
  }
}

// "Failed to WHAT: reason" for an error of an action; the server's messages already read
// "Failed to …" and are shown as they are.
export function failure(what, e) {
  const message = e && e.message ? e.message : String(e);
  return /^Failed to /.test(message) ? message : `Failed to ${what}: ${message}`;
}

// The build's log so far, as text.
export async function getBuildLog(id) {
  const response = await fetch(`/api/v1/builds/${encodeURIComponent(id)}/log`, { credentials: 'same-origin' });
  if (!response.ok) throw new ApiError(response.status, 'io', `Failed to read the log: HTTP ${response.status}`);
  return response.text();
}
