// relay.js: browser client for relay, API after supabase-js. All channels share one EventSource
// (reopened from the last position when they change); long-polls when streams cannot get through.
export const LIVE = 'Live', RECONNECTING = 'Reconnecting…', OFFLINE = 'Offline';
const CE = 'CHANNEL_ERROR';
const gt = (a, b) => b == null || (a.length - b.length || (a > b) - (a < b)) > 0; // decimal strings
const later = (ms, f) => setTimeout(f, ms);
// Tells apart bindings of one table with different filters (eq, neq, in on plain values;
// anything else counts as a match: the relay filtered exactly).
const matches = (f, row) => f.split(/,(?![^(]*\))/).every(c => {
	const [, col, not, op, v] = /^\s*(\w+)=(not\.)?(eq|neq|in)\.([\w .@-]*|\([\w .@,-]*\))\s*$/.exec(c) || [], a = row[col];
	if (!op || /[\da-f]{8}-/i.test(v)) return true;
	const r = (op == 'in' ? v.slice(1, -1).split(/\s*,\s*/) : [v]).some(x => typeof a == 'number' ? +x === a : x === String(a)) != (op == 'neq');
	return a != null && (not ? !r : r);
});
const table = c => `${c.schema || 'public'}.${c.table}`;
const params = ch => ch.bindings.flatMap(({ type, cfg: c }) => type == 'broadcast' ? [['topic', ch.topic]] : type == 'system' ? []
	: [['sub', `${table(c)}:${c.event || '*'}${c.filter ? ':' + c.filter : ''}`, c], ...c.select ? [['select', [c.select].join()]] : []]);
const setState = (ch, s, err) => ch.state != s && (ch.state = s, ch.cb?.(s, err));

export function createRelay(url, options) {
	url = (url || location.origin).replace(/\/+$/, '');
	const o = { fallbackAfter: 3, openTimeout: 10000, streamRetry: 60000, pollWait: 25, storageKey: 'relay:position:' + url, ...options };
	const chans = new Set(), ls = [];
	let status = OFFLINE, transport = null, sse = 1, gen = 0, fails = 0, errs = 0, tokFails = 0, pos = o.lastEventId;
	let tok, es, trial, abort, timer, trialTimer, closed, joining = [], query = [], filters = {};
	try { pos ??= o.storageKey && sessionStorage.getItem(o.storageKey) } catch { }
	pos = pos || pos === 0 ? String(pos) : null;

	const position = () => { // a connection resumes from the lowest position of any channel
		let p = pos;
		for (const c of chans) if (c.pos != null && gt(p ?? c.pos, c.pos)) p = c.pos;
		return p;
	};
	const save = () => { try { o.storageKey && sessionStorage.setItem(o.storageKey, position() ?? '') } catch { } };
	const set = (s, t) => (s != status || t != transport) && (status = s, transport = t, ls.forEach(f => f(s, t)));
	const fail = (t = transport) => {
		set(++errs > 4 || !navigator.onLine ? OFFLINE : RECONNECTING, t); // backoff .5 s .. 15 s
		return Math.min(15e3, 500 * 2 ** Math.min(errs - 1, 5)) * (.75 + Math.random() / 2);
	};
	const stop = () => { gen++; clearTimeout(timer); clearTimeout(trialTimer); es?.close(); trial?.close(); abort?.abort() };
	const restart = (ms = 0) => { stop(); const g = gen; closed || (timer = later(ms, () => g == gen && connect())) };
	const token = async () => o.token?.call ? tok ??= await o.token() : o.token || null; // a provider is asked again after 401/TOKEN_EXPIRED
	const qs = x => {
		const q = new URLSearchParams(query);
		for (const k in x) x[k] != null && q.append(k, x[k]);
		return q;
	};
	const init = (t, signal) => ({ signal, credentials: 'include', headers: t ? { authorization: 'Bearer ' + t } : {} });
	const probe = async (q, t) => { // the same request as JSON: token, channel or proxy problem?
		try {
			const r = await fetch(`${url}/v1/changes?${new URLSearchParams(q)}&limit=1`, init(t ?? await token()));
			return { status: r.status, body: await r.json().catch(() => 0) };
		} catch { return {} }
	};

	function connect() {
		const p = new Map();
		joining = [...chans].filter(c => c.state != CE);
		filters = {};
		for (const ch of joining) for (const [k, v, c] of params(ch)) {
			p.set(k + v, [k, v]);
			if (c) (filters[table(c)] ||= new Set()).add(c.filter || '');
		}
		query = [...p.values()];
		if (!query.length) return set(OFFLINE, null);
		sse ? stream(gen) : (poll(gen), retryStream());
	}

	async function stream(g, isTrial) {
		let t, ok;
		try { t = await token() } catch { return failed(g) }
		if (g != gen) return;
		const s = new EventSource(`${url}/v1/stream?${qs({ access_token: t, last_event_id: position() })}`, { withCredentials: true });
		isTrial ? trial = s : es = s;
		const done = () => (s.close(), clearTimeout(tm), g == gen);
		const tm = later(o.openTimeout, () => { // no SUBSCRIBED: a buffering proxy? long-poll
			if (!done() || isTrial) return isTrial && retryStream();
			joining.forEach(c => setState(c, 'TIMED_OUT'));
			toPoll();
		});
		s.addEventListener('system', e => {
			const d = JSON.parse(e.data), p = String(d.position);
			if (d.status == 'SUBSCRIBED') {
				ok = 1; clearTimeout(tm);
				if (isTrial) { abort?.abort(); es = s; sse = 1 }
				fails = 0; pos ??= p;
				joining.forEach(c => c.pos ??= p);
				live('sse');
			}
			system(d, g, s);
		});
		for (const type of ['postgres_changes', 'broadcast']) s.addEventListener(type, e => deliver(e.lastEventId, type, JSON.parse(e.data)));
		s.onerror = () => done() && (isTrial && !ok ? retryStream() : failed(g, ok));
	}

	function system(d, g, s) {
		const st = d.status, p = d.position == null ? pos : String(d.position), fwd = d.reason == 'truncate';
		if (st == 'RESYNC_REQUIRED') { // a truncate only moves positions forward
			if (!fwd || gt(p, pos)) pos = p;
			for (const c of chans) if (!fwd || gt(p, c.pos)) c.pos = p;
		}
		for (const c of chans) for (const b of c.bindings) b.type == 'system' && b.cb(d);
		if (!s || s != es) return;
		if (st == 'TOKEN_EXPIRED') tok = null;
		if (st == 'TOKEN_EXPIRED' || st == 'TOO_SLOW') restart();
		if (st == 'SHUTDOWN') s.close(), failed(g, 1, d.retry ?? 1000);
	}

	function live(t) {
		errs = tokFails = 0;
		set(LIVE, t);
		joining.forEach(c => setState(c, 'SUBSCRIBED'));
	}

	function deliver(id, type, d) {
		id = String(id);
		for (const ch of chans) {
			if (!gt(id, ch.pos)) continue;
			ch.pos = id;
			for (const { type: t, cfg: c, cb } of ch.bindings) {
				const ev = c.event || '*';
				if (t != type) continue;
				if (t == 'broadcast') d.topic == ch.topic && (ev == '*' || ev == d.event) && cb({ type, ...d, id });
				else if (table(d) == table(c) && (ev == '*' || ev == d.eventType) && (!c.filter || filters[table(c)]?.size < 2
					|| matches(c.filter, (d.eventType == 'DELETE' ? d.old : d.new) || {}))) cb({ ...d, id });
			}
		}
		if (gt(id, pos)) pos = id;
		save();
	}

	async function failed(g, wasLive, wait) {
		if (g != gen) return;
		const delay = fail();
		if (!wasLive) {
			const r = await probe(query);
			if (g != gen) return;
			if (refusal(r, g)) return;
			if (r.status == 200 && ++fails >= o.fallbackAfter) return toPoll();
		}
		timer = later(wait || delay, () => g == gen && stream(g));
	}

	function refusal(r, g) { // 401: new token; 400/403: find the refused channels
		if (r?.status == 401) {
			if (o.token?.call && ++tokFails < 3) return (tok = null, timer = later(tokFails > 1 ? 1e3 : 0, () => g == gen && connect()), 1);
			joining.forEach(c => setState(c, CE, Error('relay: token refused (401)')));
			return stop(), set(OFFLINE, null), 1;
		}
		if (r?.status != 400 && r?.status != 403) return;
		(async () => {
			const t = await token().catch(() => null);
			let bad;
			for (const ch of joining) {
				const r = await probe(params(ch).map(([k, v]) => [k, v]), t);
				if (r.status == 400 || r.status == 403) bad = setState(ch, CE, Error(r.body?.message || 'relay: ' + r.status)) || 1;
			}
			if (g != gen) return;
			bad || joining.forEach(c => setState(c, CE, Error('relay: subscriptions refused')));
			restart();
		})();
		return 1;
	}

	function toPoll() { stop(); sse = fails = 0; connect() }

	function retryStream(g = gen) {
		clearTimeout(trialTimer);
		trialTimer = later(o.streamRetry, () => g == gen && !sse && stream(g, 1));
	}

	async function poll(g) {
		let wait = 0;
		while (g == gen && !sse) {
			let r, j, ac = abort = new AbortController();
			try {
				r = await fetch(`${url}/v1/changes?${qs({ after: position(), limit: 500, wait })}`, init(await token(), ac.signal));
				j = r.ok && await r.json();
			} catch { }
			if (g != gen || sse) return;
			if (refusal(r, g)) return;
			if (!j) { await new Promise(f => later(fail('long-poll'), f)); continue }
			if (j.resync_required) { system({ status: 'RESYNC_REQUIRED', ...j }); continue }
			live('long-poll');
			for (const e of j.events) deliver(e.id, e.event, e.data);
			const p = String(j.position);
			if (gt(p, pos)) pos = p;
			chans.forEach(c => gt(p, c.pos) && (c.pos = p));
			save();
			wait = j.more ? 0 : o.pollWait;
		}
	}

	function removeChannel(ch) {
		if (chans.delete(ch)) setState(ch, 'CLOSED'), restart(30);
		return Promise.resolve('ok');
	}

	addEventListener('online', () => status != LIVE && restart());

	return {
		channel(name, co = {}) {
			const ch = {
				name, topic: co.topic || name, bindings: [], state: 'CLOSED',
				on(type, cfg, cb) {
					if (typeof cfg == 'function') [cb, cfg] = [cfg];
					if (!/^(postgres_changes|broadcast|system)$/.test(type)) throw Error('relay.js: no ' + type);
					ch.bindings.push({ type, cfg: cfg || {}, cb });
					return ch;
				},
				subscribe(cb) { // from `since` (a position) or from where the page is
					const s = co.since == null ? pos : String(co.since);
					ch.pos = s != null && pos != null && gt(s, pos) ? pos : s;
					ch.cb = cb; ch.state = 'JOINING'; closed = 0;
					chans.add(ch); restart(30);
					return ch;
				},
				unsubscribe: () => removeChannel(ch),
			};
			return ch;
		},
		removeChannel,
		removeAllChannels: () => chans.forEach(removeChannel),
		getChannels: () => [...chans],
		onStatus(cb) { ls.push(cb); cb(status, transport); return () => ls.splice(ls.indexOf(cb) >>> 0, 1) },
		reconnect(p) {
			if (p != null) { pos = String(p); chans.forEach(c => c.pos = pos) }
			sse = 1; fails = 0; restart();
		},
		disconnect() { closed = 1; stop(); chans.forEach(c => setState(c, 'CLOSED')); set(OFFLINE, null) },
		get status() { return status },
		get transport() { return transport },
		get position() { return position() },
	};
}
