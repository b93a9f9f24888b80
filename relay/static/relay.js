// relay.js: browser client for relay. Plain ES module, no build step; API after supabase-js.
// All channels share ONE EventSource; a changed set of channels reopens it from the last
// position. When the stream cannot get through it long-polls /v1/changes, retrying later.
const LIVE = 'Live', RECON = 'Reconnecting…', OFF = 'Offline';
const gt = (a, b) => b == null || (a.length !== b.length ? a.length > b.length : a > b);
const after = (ms, f) => setTimeout(f, ms);
const exp = t => { try { return JSON.parse(atob(t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))).exp } catch { return 0 } };

function split(s) { // on commas outside quotes and parentheses
  const out = []; let cur = '', q = 0, d = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (q && c === '\\') { cur += c + s[++i]; continue }
    if (c === '"') q ^= 1; else if (!q && c === '(') d++; else if (!q && c === ')') d--;
    else if (!q && !d && c === ',') { out.push(cur.trim()); cur = ''; continue }
    cur += c;
  }
  return out.concat(cur.trim());
}
const unq = v => v[0] === '"' ? v.slice(1, -1).replace(/\\(.)/g, '$1') : v;
const OPS = { eq: c => c === 0, neq: c => c !== 0, lt: c => c < 0, lte: c => c <= 0, gt: c => c > 0, gte: c => c >= 0 };
// Client-side check, used only to tell apart bindings on one table with different filters.
// Anything it cannot decide exactly as Postgres would counts as a match (the server filtered).
function matches(filter, row) {
  return split(filter).every(cond => {
    const m = /^([^=]+)=(not\.)?(\w+)\.([\s\S]*)$/.exec(cond);
    if (!m) return true;
    const a = row[m[1].trim()], op = m[3];
    if (op === 'is' || (a != null && typeof a !== 'number' && typeof a !== 'boolean' && (!/^[\w .@-]*$/.test(a) || /^[\da-f]{8}-/i.test(a)))) return true;
    if (a == null) return !OPS[op] && op !== 'in';
    const cmp = v => typeof a === 'number' ? (v = Number(v), a < v ? -1 : a > v ? 1 : a === v ? 0 : NaN) : (a = String(a), a < v ? -1 : a > v ? 1 : 0);
    let r;
    if (op === 'in') r = split(m[4].replace(/^\(|\)$/g, '')).some(x => x !== '' && cmp(unq(x)) === 0);
    else if (OPS[op]) r = OPS[op](cmp(unq(m[4])));
    else return true;
    return m[2] ? !r : r;
  });
}

class Channel {
  constructor(relay, name, o = {}) {
    Object.assign(this, { relay, name, topic: o.topic || name, since: o.since, bindings: [], state: 'CLOSED', pos: null });
  }
  on(type, cfg, cb) {
    if (typeof cfg === 'function') [cb, cfg] = [cfg, {}];
    if (!['postgres_changes', 'broadcast', 'system'].includes(type)) throw new Error(`relay.js: '${type}' is not supported`);
    if (type === 'postgres_changes' && !cfg.table) throw new Error('relay.js: postgres_changes needs a table');
    this.bindings.push({ type, cfg: cfg || {}, cb });
    return this;
  }
  subscribe(cb) { this.cb = cb; this.state = 'JOINING'; this.relay._add(this); return this }
  unsubscribe() { this.relay.removeChannel(this); return Promise.resolve('ok') }
  _status(s, err) { if (this.state !== s) { this.state = s; this.cb?.(s, err) } }
  params() {
    const p = [];
    for (const { type, cfg } of this.bindings) {
      if (type === 'postgres_changes') {
        p.push(['sub', `${cfg.schema || 'public'}.${cfg.table}:${cfg.event || '*'}${cfg.filter ? ':' + cfg.filter : ''}`]);
        if (cfg.select) p.push(['select', [].concat(cfg.select).join(',')]);
      } else if (type === 'broadcast' && !p.some(x => x[0] === 'topic')) p.push(['topic', this.topic]);
    }
    return p;
  }
}

class Relay {
  constructor(url, o = {}) {
    this.url = (url || location.origin).replace(/\/+$/, '');
    this.o = { fallbackAfter: 3, openTimeout: 10000, streamRetry: 60000, pollWait: 25, pollLimit: 500, offlineAfter: 5, maxDelay: 15000, storageKey: 'relay:position:' + this.url, ...o };
    this.cross = new URL(this.url, location.href).origin !== location.origin;
    this.channels = new Set(); this.listeners = { status: new Set(), resync: new Set() };
    this.status = OFF; this.transport = null; this.mode = 'sse'; this.gen = 0; this.fails = 0; this.errs = 0;
    let saved = null;
    try { saved = this.o.storageKey && sessionStorage.getItem(this.o.storageKey) } catch {}
    const first = o.lastEventId ?? saved;
    this.pos = first == null || first === '' ? null : String(first);
    addEventListener('pagehide', () => this._save(true));
    addEventListener('online', () => !this.closed && this.status !== LIVE && this._restart());
    addEventListener('offline', () => this._set(OFF, this.transport));
  }
  channel(name, o) { return new Channel(this, name, o) }
  getChannels() { return [...this.channels] }
  removeChannel(ch) {
    if (this.channels.delete(ch)) { ch._status('CLOSED'); this._restart(30) }
    return Promise.resolve('ok');
  }
  removeAllChannels() { for (const ch of [...this.channels]) this.removeChannel(ch) }
  onStatus(cb) { this.listeners.status.add(cb); cb(this.status, this.transport); return () => this.listeners.status.delete(cb) }
  onResync(cb) { this.listeners.resync.add(cb); return () => this.listeners.resync.delete(cb) }
  get position() { // where a new connection resumes: the lowest position any channel holds
    let p = this.pos;
    for (const ch of this.channels) if (ch.pos != null && (p == null || gt(p, ch.pos))) p = ch.pos;
    return p;
  }
  reconnect(position) {
    if (position != null) { this.pos = String(position); for (const ch of this.channels) ch.pos = this.pos }
    this.mode = 'sse'; this.fails = 0; this._restart(0);
  }
  disconnect() { this.closed = true; this._stop(); for (const ch of this.channels) ch._status('CLOSED'); this._set(OFF, null) }

  _add(ch) {
    this.closed = false;
    ch.pos = ch.since != null ? String(ch.since) : this.pos;
    if (ch.pos != null && this.pos != null && gt(ch.pos, this.pos)) ch.pos = this.pos;
    this.channels.add(ch); this._restart(30);
  }
  _set(status, transport) {
    if (status === this.status && transport === this.transport) return;
    this.status = status; this.transport = transport;
    for (const cb of this.listeners.status) cb(status, transport);
  }
  _save(now) {
    if (!this.o.storageKey || (this.saving && !now)) return;
    this.saving = true;
    const w = () => { this.saving = false; try { const p = this.position; p != null && sessionStorage.setItem(this.o.storageKey, p) } catch {} };
    now ? w() : after(250, w);
  }
  _stop() {
    this.gen++; clearTimeout(this.timer); clearTimeout(this.trialTimer);
    this.es?.close(); this.trial?.close(); this.es = this.trial = null; this.abort?.abort();
  }
  _restart(ms = 0) { this._stop(); if (this.closed) return; const g = this.gen; this.timer = after(ms, () => g === this.gen && this._connect()) }
  _connect() {
    const live = [...this.channels].filter(c => c.state !== 'CHANNEL_ERROR');
    this.joining = live;
    const p = new Map();
    for (const ch of live) for (const [k, v] of ch.params()) p.set(k + '=' + v, [k, v]);
    this.query = [...p.values()];
    this.checked = {}; // tables whose bindings disagree on the filter need a client-side check
    for (const ch of live) for (const b of ch.bindings) if (b.type === 'postgres_changes') {
      const t = `${b.cfg.schema || 'public'}.${b.cfg.table}`;
      (this.checked[t] ||= new Set()).add(b.cfg.filter || '');
    }
    if (!this.query.length) return this._set(OFF, null);
    if (this.mode === 'poll') { this._poll(this.gen); this._scheduleTrial() } else this._stream(this.gen, false);
  }
  async _token(force) {
    const t = this.o.token;
    if (typeof t !== 'function') return t || null;
    if (force || !this.tok || exp(this.tok) * 1000 < Date.now() + 5000) this.tok = await t();
    return this.tok;
  }
  _qs(extra) {
    const q = new URLSearchParams(this.query);
    for (const [k, v] of Object.entries(extra)) v != null && q.append(k, v);
    return q;
  }
  async _stream(g, trial) {
    let tok;
    try { tok = await this._token() } catch (e) { return this._failed(g, false, 0) }
    if (g !== this.gen) return;
    const es = new EventSource(`${this.url}/v1/stream?${this._qs({ access_token: tok, last_event_id: this.position })}`, { withCredentials: this.cross });
    let ok = false;
    trial ? (this.trial = es) : (this.es = es);
    const done = () => { es.close(); clearTimeout(timeout); return g === this.gen };
    const timeout = after(this.o.openTimeout, () => {
      if (!done() || trial) return trial && this._scheduleTrial();
      for (const ch of this.joining) ch._status('TIMED_OUT');
      this._toPoll(); // a buffering proxy holds the stream back: long-poll instead
    });
    es.addEventListener('system', e => {
      const d = JSON.parse(e.data);
      if (d.status === 'SUBSCRIBED') {
        ok = true; clearTimeout(timeout);
        if (trial) { this.abort?.abort(); this.pgen = -1; this.es = es; this.trial = null; this.mode = 'sse' }
        this.fails = 0;
        this._live('sse', d.position);
      }
      this._system(d, g, es);
    });
    for (const type of ['postgres_changes', 'broadcast'])
      es.addEventListener(type, e => this._deliver(e.lastEventId, type, JSON.parse(e.data)));
    es.onerror = () => {
      if (!done()) return;
      if (trial && !ok) return this._scheduleTrial();
      this._failed(g, ok, 0);
    };
  }
  _system(d, g, es) {
    const s = d.status;
    if (s === 'RESYNC_REQUIRED') {
      const p = d.position != null ? String(d.position) : this.pos; // a truncate only moves forward
      for (const ch of this.channels) if (d.reason !== 'truncate' || gt(p, ch.pos)) ch.pos = p;
      if (d.reason !== 'truncate' || gt(p, this.pos)) this.pos = p;
      for (const cb of this.listeners.resync) cb(d);
    }
    for (const ch of this.channels) for (const b of ch.bindings) b.type === 'system' && b.cb(d);
    if (es !== this.es) return;
    if (s === 'TOKEN_EXPIRED') this.tok = null;
    if (s === 'TOKEN_EXPIRED' || s === 'TOO_SLOW') this._restart(0); // resumes from this.position
    else if (s === 'SHUTDOWN') { es.close(); this._failed(g, true, d.retry ?? 1000) }
  }
  _live(transport, position) {
    if (position != null) {
      const p = String(position);
      if (this.pos == null) this.pos = p;
      for (const ch of this.joining) if (ch.pos == null) ch.pos = p;
    }
    this.errs = 0; this.tokFails = 0;
    this._set(LIVE, transport);
    for (const ch of this.joining) ch._status('SUBSCRIBED');
  }
  _deliver(id, type, d) {
    id = String(id);
    for (const ch of this.channels) {
      if (!gt(id, ch.pos)) continue;
      ch.pos = id;
      for (const b of ch.bindings) {
        if (b.type !== type) continue;
        const c = b.cfg;
        if (type === 'broadcast') {
          if (d.topic === ch.topic && (!c.event || c.event === '*' || c.event === d.event))
            b.cb({ type, event: d.event, payload: d.payload, topic: d.topic, id });
        } else if (d.table === c.table && d.schema === (c.schema || 'public') && (!c.event || c.event === '*' || c.event === d.eventType)) {
          const row = d.eventType === 'DELETE' ? d.old : d.new;
          if (!c.filter || this.checked[`${d.schema}.${d.table}`]?.size < 2 || matches(c.filter, row || {})) b.cb({ ...d, id });
        }
      }
    }
    if (gt(id, this.pos)) this.pos = id;
    this._save();
  }
  async _failed(g, wasLive, wait) {
    if (g !== this.gen) return;
    this.errs++;
    this._set(this.errs >= this.o.offlineAfter || navigator.onLine === false ? OFF : RECON, this.transport);
    if (!wasLive) {
      const r = await this._probe(this.query);
      if (g !== this.gen) return;
      if (r.status === 401) return this._unauthorized(g);
      if (r.status === 400 || r.status === 403) return this._channelErrors(g);
      if (r.status === 200 && ++this.fails >= this.o.fallbackAfter) return this._toPoll();
    }
    const delay = wait || Math.min(this.o.maxDelay, 500 * 2 ** Math.min(this.errs - 1, 8)) * (0.75 + Math.random() / 2);
    this.timer = after(delay, () => g === this.gen && this._stream(g, false));
  }
  async _probe(query, tok) { // the same request as JSON: tells a token, channel or proxy problem apart
    try {
      tok ??= await this._token();
      const r = await fetch(`${this.url}/v1/changes?${new URLSearchParams(query)}&limit=1`, this._init(tok));
      return { status: r.status, body: await r.json().catch(() => null) };
    } catch { return { status: 0 } }
  }
  _init(tok, signal) { return { signal, credentials: this.cross ? 'include' : 'same-origin', headers: tok ? { authorization: 'Bearer ' + tok } : {} } }
  async _unauthorized(g) {
    if (typeof this.o.token === 'function' && (this.tokFails = (this.tokFails || 0) + 1) < 3) {
      this.tok = null;
      return this.timer = after(this.tokFails > 1 ? 1000 : 0, () => g === this.gen && this._connect());
    }
    for (const ch of this.joining) ch._status('CHANNEL_ERROR', new Error('relay: token rejected (401)'));
    this._stop(); this._set(OFF, null);
  }
  async _channelErrors(g) { // find the channels the relay refuses; keep the others going
    const tok = await this._token().catch(() => null);
    let bad = 0;
    for (const ch of this.joining) {
      const r = await this._probe(ch.params(), tok);
      if (r.status === 400 || r.status === 403) { bad++; ch._status('CHANNEL_ERROR', new Error(r.body?.message || 'relay: ' + r.status)) }
    }
    if (g !== this.gen) return;
    if (!bad) for (const ch of this.joining) ch._status('CHANNEL_ERROR', new Error('relay: subscriptions refused'));
    this._restart(0);
  }
  _toPoll() {
    this._stop(); this.mode = 'poll'; this.fails = 0;
    this._connect();
  }
  _scheduleTrial() {
    clearTimeout(this.trialTimer);
    const g = this.gen;
    this.trialTimer = after(this.o.streamRetry, () => g === this.gen && this.mode === 'poll' && this._stream(g, true));
  }
  async _poll(g) {
    this.pgen = g;
    let wait = 0;
    while (g === this.gen && this.pgen === g) {
      const ac = this.abort = new AbortController();
      let r, j, tok;
      try {
        tok = await this._token();
        r = await fetch(`${this.url}/v1/changes?${this._qs({ after: this.position, limit: this.o.pollLimit, wait })}`, this._init(tok, ac.signal));
        if (r.ok) j = await r.json();
      } catch { }
      if (g !== this.gen || this.pgen !== g) return;
      if (r?.status === 401) return this._unauthorized(g);
      if (r?.status === 400 || r?.status === 403) return this._channelErrors(g);
      if (!j) {
        this.errs++;
        this._set(this.errs >= this.o.offlineAfter || navigator.onLine === false ? OFF : RECON, 'long-poll');
        await new Promise(res => after(Math.min(this.o.maxDelay, 500 * 2 ** Math.min(this.errs - 1, 8)), res));
        continue;
      }
      if (j.resync_required) {
        this._system({ status: 'RESYNC_REQUIRED', reason: j.reason, oldest: j.oldest, position: j.position }, g, {});
        continue;
      }
      this._live('long-poll');
      for (const e of j.events) this._deliver(e.id, e.event, typeof e.data === 'string' ? JSON.parse(e.data) : e.data);
      const p = String(j.position);
      for (const ch of this.channels) if (gt(p, ch.pos)) ch.pos = p;
      if (gt(p, this.pos)) this.pos = p;
      this._save();
      wait = j.more ? 0 : this.o.pollWait;
    }
  }
}

export function createRelay(url, options) { return new Relay(url, options) }
export { Relay, Channel, LIVE, RECON as RECONNECTING, OFF as OFFLINE };
