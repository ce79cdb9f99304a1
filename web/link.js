// link.js: what the victim's page scripts share: the link's token (from the page's
// own address, /j/<token>), the URLs of the resources under it, and JSON requests
// that send the link's binding cookie and are never cached.

export { $, el } from '/static/dom.js';

export const token = location.pathname.split('/')[2] || '';

/** The URL of a resource under this link, e.g. linkURL('uploads'). */
export const linkURL = (resource = '') => `/j/${token}${resource ? `/${resource}` : ''}`;

async function request(url, init) {
  const r = await fetch(url, { credentials: 'same-origin', cache: 'no-store', ...init }).catch(() => null);
  if (!r) return { ok: false, status: 0, body: null };
  return { ok: r.ok, status: r.status, body: await r.json().catch(() => null) };
}

/** GET JSON: {ok, status, body} (status 0 when the network failed). */
export const getJSON = (url) => request(url);

/** POST JSON: {ok, status, body}. */
export const postJSON = (url, body) => request(url, {
  method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
});
