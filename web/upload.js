// upload.js: a small tus 1.0 client (creation, core, checksum) for the pages.
// Sends a File in chunks with XMLHttpRequest (for upload progress), can pause and
// resume (asking the server for its offset with HEAD), retries after network errors,
// and sends an Upload-Checksum (sha256) per chunk where the browser can hash.
// The upload URL is kept in memory only: nothing is left in the browser's storage.

const TUS = { 'Tus-Resumable': '1.0.0' };
const CHUNK = 8 * 1024 * 1024;
const RETRY_DELAYS = [1000, 3000, 5000, 10000, 20000, 30000];

function b64(text) {
  return btoa(String.fromCharCode(...new TextEncoder().encode(text)));
}

async function checksum(blob) {
  if (!globalThis.crypto?.subtle) return null; // only over HTTPS (and on localhost)
  const digest = await crypto.subtle.digest('SHA-256', await blob.arrayBuffer());
  return 'sha256 ' + btoa(String.fromCharCode(...new Uint8Array(digest)));
}

function httpError(status, body) {
  // 507: the server is short of space for this file now; trying again at once will not help.
  return Object.assign(new Error(body?.error?.message || `The server answered ${status}.`),
    { status, code: body?.error?.code, retry: (status >= 500 && status !== 507) || status === 423 });
}

const connectionLost = () => Object.assign(new Error('The connection was lost.'), { retry: true });

export class TusUpload {
  /**
   * @param {File} file
   * @param {string} endpoint  the tus creation URL, e.g. /j/<token>/uploads
   * @param {{headers?: object, onProgress?: Function, onSuccess?: Function, onError?: Function, onState?: Function}} opts
   */
  constructor(file, endpoint, opts = {}) {
    this.file = file;
    this.endpoint = endpoint;
    this.opts = opts;
    this.url = null;
    this.offset = 0;
    this.paused = false;
    this.done = false;
    this.xhr = null;
    this.failures = 0;
  }

  headers(extra = {}) {
    const given = typeof this.opts.headers === 'function' ? this.opts.headers() : (this.opts.headers || {});
    return { ...TUS, ...given, ...extra };
  }

  state(name) { this.opts.onState?.(name, this); }

  async start() {
    this.paused = false;
    this.state('sending');
    try {
      if (!this.url) await this.create();
      else await this.head();
      while (!this.paused && this.offset < this.file.size) await this.patch();
      if (!this.paused) {
        this.done = true;
        this.state('done');
        this.opts.onSuccess?.(this);
      }
    } catch (err) {
      if (this.paused) return;
      if (err.retry && this.failures < RETRY_DELAYS.length) {
        this.state('retrying');
        const delay = RETRY_DELAYS[this.failures++];
        setTimeout(() => { if (!this.paused) this.start(); }, delay);
        return;
      }
      this.state('failed');
      this.opts.onError?.(err, this);
    }
  }

  pause() {
    this.paused = true;
    this.xhr?.abort();
    this.state('paused');
  }

  resume() { if (!this.done) this.start(); }

  async cancel() {
    this.pause();
    if (this.url && !this.done) {
      await fetch(this.url, { method: 'DELETE', headers: this.headers(), credentials: 'same-origin' }).catch(() => {});
    }
    this.state('cancelled');
  }

  async create() {
    const meta = `filename ${b64(this.file.name)},filetype ${b64(this.file.type || 'application/octet-stream')}`;
    const r = await this.fetch(this.endpoint, 'POST', { 'Upload-Length': String(this.file.size), 'Upload-Metadata': meta });
    if (r.status !== 201) throw await this.failure(r);
    this.url = new URL(r.headers.get('Location'), location.href).pathname;
    this.offset = 0;
    this.progress();
  }

  async head() {
    const r = await this.fetch(this.url, 'HEAD');
    if (r.status !== 200) throw await this.failure(r);
    this.offset = Number(r.headers.get('Upload-Offset'));
    this.progress();
  }

  async fetch(url, method, extra = {}) {
    try {
      return await fetch(url, { method, headers: this.headers(extra), credentials: 'same-origin', cache: 'no-store' });
    } catch {
      throw connectionLost();
    }
  }

  async failure(r) {
    return httpError(r.status, await r.json().catch(() => null));
  }

  progress(extra = 0) { this.opts.onProgress?.(this.offset + extra, this.file.size, this); }

  async patch() {
    const chunk = this.file.slice(this.offset, this.offset + CHUNK);
    const sum = await checksum(chunk);
    const headers = this.headers({ 'Upload-Offset': String(this.offset), 'Content-Type': 'application/offset+octet-stream' });
    if (sum) headers['Upload-Checksum'] = sum;
    const xhr = new XMLHttpRequest();
    this.xhr = xhr;
    const status = await new Promise((resolve) => {
      xhr.open('PATCH', this.url);
      for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (e) => this.progress(e.loaded);
      xhr.onload = () => resolve(xhr.status);
      xhr.onerror = xhr.onabort = xhr.ontimeout = () => resolve(0);
      xhr.send(chunk);
    });
    this.xhr = null;
    if (status === 204) {
      this.offset = Number(xhr.getResponseHeader('Upload-Offset'));
      this.failures = 0;
      this.progress();
      return;
    }
    if (this.paused) return;
    if (status === 0) throw connectionLost();
    if ((status === 409 || status === 460) && this.failures++ < 5) { await this.head(); return; } // re-sync, send again
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
    throw httpError(status, body);
  }
}

export function formatSize(bytes) {
  const units = ['bytes', 'KB', 'MB', 'GB'];
  let n = bytes;
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}
