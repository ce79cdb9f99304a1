// staff.js: what the staff pages (the officer's console, the records console) share:
// DOM helpers and the JSON API client that sends the session cookie and, on changes,
// the CSRF token. The token lives in memory only (``session.csrf``).

export const $ = (id) => document.getElementById(id);

export function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text != null) e.textContent = text;
  if (className) e.className = className;
  return e;
}

/** The signed-in session: its CSRF token, and what to do when the server ends it. */
export const session = { csrf: null, onExpired: () => {} };

export const errorText = (r, fallback) => r.data?.error?.message || `${fallback} (${r.status || 'network error'})`;

/** JSON request with the session cookie and, for non-GET, the CSRF header. */
export async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  let r;
  try {
    r = await fetch(path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    return { ok: false, status: 0, data: null };
  }
  const data = await r.json().catch(() => null);
  if (r.status === 401 && path !== '/api/login' && session.csrf) session.onExpired();
  return { ok: r.ok, status: r.status, data };
}
