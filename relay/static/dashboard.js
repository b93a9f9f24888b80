// The demo dashboard: the pages our users build, on relay.js and the demo tables.
// Everything shown comes from row changes and broadcasts. Row values are hostile strings:
// they only ever reach the page through textContent, never innerHTML.
import { createRelay } from '/relay.js';

// The row tables open with their rows as they are now (`snapshot: true`). A stream's
// progress, agents and feed are broadcasts, not rows: on a first visit the last HISTORY
// transactions of each shown stream's topic are replayed. Each transaction's changes sit
// in a block of BLOCK positions (docs/architecture.md, "Positions").
const HISTORY = 3000;
const BLOCK = 16384;
const CAP = { streams: 20, jobs: 20, tasks: 30, enrich: 20, items: 6, feed: 5, subs: 6 };
const FINISHED = new Set(['completed', 'failed', 'cancelled']);
const STAGES = ['discovered', 'enriched', 'qualified'];
const LABELS = {
  in_progress: 'In progress', pending: 'Pending', completed: 'Completed', failed: 'Failed',
  running: 'Running', active: 'Active', submitted: 'Submitted', processing: 'Processing',
  cancelled: 'Cancelled', paused: 'Paused', stopped: 'Stopped',
};

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = String(text);
  return e;
};
const setText = (e, v) => { v = v == null ? '' : String(v); if (e.textContent !== v) e.textContent = v; };
const setClass = (e, c) => { if (e.className !== c) e.className = c; };
const label = (s) => LABELS[s] || String(s ?? '');
const num = (v) => (typeof v === 'number' ? v : Number(v));
const when = (ts) => Date.parse(ts);
const fresh = (ts, ms) => Date.now() - when(ts) < ms;
const scoreClass = (q) => (q == null ? '' : q >= 80 ? 'good' : q >= 65 ? 'ok' : 'low');
const newest = (a, b) => (when(b.created_at) || 0) - (when(a.created_at) || 0);
function ago(ts) {
  const s = Math.round((Date.now() - when(ts)) / 1000);
  if (!Number.isFinite(s)) return '';
  if (s < 5) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}
function claimsOf(token) {
  try {
    return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch { return {}; }
}
function badge(status, extra = '') {
  const b = el('span', `badge ${status} ${extra}`.trim());
  b.append(el('span', 'dot'), el('span', null, label(status)));
  return b;
}
function setBadge(b, status) {
  setClass(b, `badge ${status}`);
  setText(b.lastChild, label(status));
}

// Keyed list update: reuse each item's element, so animations and transitions keep running.
function keyed(parent, items, key, make, update) {
  const old = new Map();
  for (const c of parent.children) old.set(c.dataset.key, c);
  let prev = null;
  for (const it of items) {
    const k = String(key(it));
    let e = old.get(k);
    if (e) old.delete(k); else { e = make(it); e.dataset.key = k; }
    update(e, it);
    const next = prev ? prev.nextSibling : parent.firstChild;
    if (e !== next) parent.insertBefore(e, next);
    prev = e;
  }
  for (const e of old.values()) e.remove();
}

// ---- state ---------------------------------------------------------------------------------

const empty = () => ({
  streams: {}, progress: {}, items: {}, feed: {}, agents: {},
  jobs: {}, subs: {}, enrich: {}, tasks: {}, focus: null,
});
let S = empty();
let relay = null;
let user = null;
let claims = {};
let topics = new Map(); // stream id -> channel of stream-progress:{id}
let topicPositions = {}; // stream id -> how far its topic was delivered before it was dropped
let baseline = 0; // the page holds everything up to this position when it opens
let bumps = {};
let generation = 0;
let changed = false;
let openedAt = Date.now(); // milestones from before the page opened are history: no toast
const toasted = new Set(); // milestones already shown on this page (stream id | type)
const MAX_TOASTS = 2; // visible at once; older ones leave first
const TOAST_MS = 5000;

function trim(map, cap) {
  const rows = Object.values(map).sort(newest);
  for (const r of rows.slice(cap)) delete map[r.id];
  return rows.slice(cap).map((r) => r.id);
}
function upsert(map, d) {
  if (d.eventType === 'DELETE') {
    const gone = map[d.old.id];
    delete map[d.old.id];
    return { row: null, prev: gone };
  }
  const prev = map[d.new.id];
  // a snapshot row was first seen before the page: its topic is replayed from the baseline
  const snapshot = d.eventType === 'SNAPSHOT';
  const at = snapshot ? d.new.updated_at ?? d.new.created_at : d.commit_timestamp;
  const row = { ...d.new, _at: at, _pos: prev?._pos ?? (snapshot ? undefined : d.id) };
  map[d.new.id] = row;
  return { row, prev };
}
function upsertIn(list, row, cap) {
  const i = list.findIndex((x) => x.id === row.id);
  if (i >= 0) list[i] = row; else list.unshift(row);
  list.sort(newest);
  list.length = Math.min(list.length, cap);
}
function forgetStream(id) {
  for (const k of ['progress', 'items', 'feed', 'agents']) delete S[k][id];
  if (S.focus === id) S.focus = null;
}

const onRow = {
  streams(d) {
    const { row } = upsert(S.streams, d);
    if (!row) forgetStream(d.old.id);
    for (const id of trim(S.streams, CAP.streams)) forgetStream(id);
    syncTopics();
  },
  stream_items(d) {
    const r = d.eventType === 'DELETE' ? d.old : d.new;
    const list = (S.items[r.stream_id] ||= []);
    if (d.eventType === 'DELETE') {
      const i = list.findIndex((x) => x.id === r.id);
      if (i >= 0) list.splice(i, 1);
    } else if (d.eventType !== 'UPDATE' || list.some((x) => x.id === r.id)) {
      upsertIn(list, r, CAP.items);
    }
  },
  jobs(d) { upsert(S.jobs, d); trim(S.jobs, CAP.jobs); },
  directory_submissions(d) {
    const r = d.eventType === 'DELETE' ? d.old : d.new;
    const list = (S.subs[r.job_id] ||= []);
    if (d.eventType === 'DELETE') S.subs[r.job_id] = list.filter((x) => x.id !== r.id);
    else upsertIn(list, r, CAP.subs);
  },
  bulk_enrichment_jobs(d) {
    const { row, prev } = upsert(S.enrich, d);
    if (row && FINISHED.has(row.status)) {
      row._done = prev && FINISHED.has(prev.status) && prev._done ? prev._done : when(d.commit_timestamp);
    }
    trim(S.enrich, CAP.enrich);
  },
  agent_tasks(d) { upsert(S.tasks, d); trim(S.tasks, CAP.tasks); },
};

const onBroadcast = {
  'progress-update'(p) {
    const prev = S.progress[p.stream_id];
    if (prev && p.completed > prev.completed && fresh(p.last_updated, 15000)) {
      bumps[p.stream_id] = (bumps[p.stream_id] || 0) + (p.completed - prev.completed);
    }
    S.progress[p.stream_id] = p;
  },
  'agent-activity'(a) {
    const feed = (S.feed[a.stream_id] ||= []);
    if (!feed.some((x) => x.id === a.id)) {
      feed.unshift(a);
      feed.sort((x, y) => when(y.timestamp) - when(x.timestamp));
      feed.length = Math.min(feed.length, CAP.feed);
    }
    const agents = (S.agents[a.stream_id] ||= {});
    const known = agents[a.agent_id];
    if (!known || when(known.at) <= when(a.timestamp)) {
      agents[a.agent_id] = { name: a.agent_name, type: a.agent_type, status: a.activity_type, at: a.timestamp };
    }
  },
  milestone(m) {
    if (when(m.timestamp) < openedAt - 3000 || !fresh(m.timestamp, 120000)) return;
    const seen = `${m.stream_id}|${m.type}`; // once per page, whichever viewer replays it
    if (toasted.has(seen)) return;
    toasted.add(seen);
    const target = /target/i.test(String(m.type));
    const stream = S.streams[m.stream_id];
    toast({
      kind: target ? 'target' : 'milestone',
      icon: target ? '◎' : '★',
      title: m.title,
      body: stream ? `${stream.name} · ${m.description}` : m.description,
    });
  },
};

function handleRow(d) {
  const f = onRow[d.table];
  if (f) { f(d); touch(); }
}
function handleBroadcast(m) {
  const f = onBroadcast[m.event];
  if (f && m.payload && typeof m.payload === 'object') { f(m.payload); touch(); }
}

// One channel per active stream's topic (stream-progress:{id}), opened from where the page
// first saw the stream (or from what it already holds), so the broadcasts sent since then
// are delivered, not lost. relay.js catches such a channel up on its own and keeps the one
// stream going from where it was: a new topic never replays what the page already has.
function syncTopics() {
  if (!relay) return;
  // active streams, and those that ended in the last minute (their last broadcasts follow
  // the row update that ended them)
  const want = new Set(
    Object.values(S.streams).filter((s) => s.status === 'active' || fresh(s._at, 60000))
      .sort(newest).slice(0, 12).map((s) => s.id),
  );
  if (S.focus && S.streams[S.focus]) want.add(S.focus);
  for (const [id, ch] of topics) {
    if (!want.has(id)) {
      topicPositions[id] = ch.position;
      relay.removeChannel(ch);
      topics.delete(id);
    }
  }
  for (const id of want) {
    if (topics.has(id)) continue;
    const since = Math.max(num(S.streams[id]._pos) || 0, num(topicPositions[id]) || 0, baseline);
    const ch = relay
      .channel(`stream-progress:${id}`, { since })
      .on('broadcast', { event: '*' }, handleBroadcast)
      .subscribe();
    topics.set(id, ch);
  }
}

// ---- connection ------------------------------------------------------------------------------

async function loadUsers() {
  const list = [];
  const link = sessionStorage.getItem('dash:link');
  if (link) {
    const c = claimsOf(link);
    const who = c.role === 'service_role' ? 'service role' : `${c.sub || 'user'} (${[].concat(c.org_ids || c.org_id || []).join(', ') || 'no org'})`.slice(0, 60);
    list.push({ label: `${who} · link`, token: link, link: true });
  }
  try {
    const r = await fetch('/demo/tokens', { cache: 'no-store' });
    if (r.ok) for (const u of await r.json()) if (u && u.token && u.label) list.push({ label: String(u.label), token: String(u.token) });
  } catch { /* not in demo mode */ }
  // The demo's printed link is one of its users: list it once, under that user's name.
  const who = (t) => { const c = claimsOf(t); return JSON.stringify([c.sub, c.role, [].concat(c.org_ids || c.org_id || [])]); };
  if (list[0]?.link && list.slice(1).some((u) => who(u.token) === who(list[0].token))) list.shift();
  return list;
}

async function tokenFor(u) {
  if (u.link) return u.token;
  const c = claimsOf(u.token);
  if (c.exp && c.exp * 1000 > Date.now() + 60000) return u.token;
  try {
    const r = await fetch('/demo/tokens', { cache: 'no-store' });
    const fresh = r.ok ? (await r.json()).find((x) => x.label === u.label) : null;
    if (fresh) u.token = fresh.token;
  } catch { /* keep the old one */ }
  return u.token;
}

async function headPosition(u) {
  // The log's head: the one stream opens there, and history up to it is caught up first.
  try {
    const r = await fetch('/v1/changes?sub=streams&limit=1', {
      headers: { authorization: `Bearer ${await tokenFor(u)}` }, cache: 'no-store',
    });
    const j = await r.json();
    if (r.ok && Number.isFinite(j.position)) return j.position;
  } catch { /* the relay is not reachable yet: start from now */ }
  return undefined;
}

// What the tab keeps across reloads: the broadcasts' state (rows come from the snapshot).
const snapKey = (u) => `dash:broadcasts:${u.label}`;
function saveBroadcasts() {
  if (!relay || !user || !changed) return;
  changed = false;
  const pos = relay.position;
  if (pos == null) return;
  const state = { progress: S.progress, feed: S.feed, agents: S.agents };
  try { sessionStorage.setItem(snapKey(user), JSON.stringify({ pos, state })); } catch { /* full */ }
}
function loadBroadcasts(u) {
  try { return JSON.parse(sessionStorage.getItem(snapKey(u)) || 'null'); } catch { return null; }
}

function showConnection(status, transport) {
  const c = $('conn');
  c.dataset.status = status;
  c.dataset.transport = transport || '';
  setText($('conn-text'), status);
  setText($('conn-transport'), transport === 'long-poll' ? '· long-poll' : transport === 'sse' ? '· SSE' : '');
  c.title = transport === 'long-poll'
    ? 'The event stream cannot get through (a buffering proxy?): long-polling instead'
    : 'Server-Sent Events stream to the relay';
}

async function start(u) {
  const gen = ++generation;
  if (relay) { saveBroadcasts(); relay.removeAllChannels(); relay.disconnect(); relay = null; }
  user = u;
  openedAt = Date.now();
  claims = claimsOf(u.token);
  topics = new Map();
  topicPositions = {};
  bumps = {};
  const saved = loadBroadcasts(u);
  S = { ...empty(), ...saved?.state };
  render();
  // One stream per page load: it opens at the head, once the row tables have their
  // snapshot and the topics have been caught up to there (over /v1/changes): from the
  // tab's saved position on a reload, the last HISTORY transactions on a first visit.
  const head = await headPosition(u);
  if (gen !== generation) return;
  const from = saved?.pos ?? (head == null ? undefined : Math.max(0, head - HISTORY * BLOCK));
  baseline = num(from) || 0;
  relay = createRelay(location.origin, { token: () => tokenFor(u), lastEventId: head == null || baseline > head ? from : head, storageKey: false });
  relay.onStatus(showConnection);
  const onResync = (info) => {
    if (info.status !== 'RESYNC_REQUIRED') return;
    if (info.reason === 'ahead') { S = empty(); touch(); } // another database: forget this one's rows
    if (info.reason === 'truncate') {
      const key = Object.entries({ streams: 'streams', jobs: 'jobs', agent_tasks: 'tasks', bulk_enrichment_jobs: 'enrich' })
        .find(([t]) => t === info.table);
      if (key) S[key[1]] = {};
      touch();
    }
    toast({ kind: 'info', icon: '↻', title: 'Caught up', body: info.reason === 'truncate' ? `${info.table} was emptied` : 'Some history is no longer kept: showing changes from now on.' });
  };
  const mine = claims.role !== 'service_role' && claims.sub;
  const main = relay.channel('dashboard', { snapshot: true }).on('system', {}, onResync);
  for (const table of Object.keys(onRow)) {
    const filter = table === 'bulk_enrichment_jobs' && mine ? `user_id=eq."${String(claims.sub).replace(/[\\"]/g, '\\$&')}"` : undefined;
    main.on('postgres_changes', { event: '*', schema: 'public', table, filter }, handleRow);
  }
  main.subscribe((status, err) => {
    if (status === 'CHANNEL_ERROR') toast({ kind: 'info', icon: '!', title: 'Subscription refused', body: err?.message || '' });
  });
  syncTopics();
}

async function main() {
  const qs = new URLSearchParams(location.search);
  const link = qs.get('access_token');
  if (link) {
    // Keep the token out of the address bar (and out of screenshots and shared links).
    sessionStorage.setItem('dash:link', link);
    sessionStorage.removeItem('dash:who');
    qs.delete('access_token');
    history.replaceState(null, '', location.pathname + (qs.toString() ? `?${qs}` : '') + location.hash);
  }
  const users = await loadUsers();
  const select = $('who');
  if (!users.length) {
    $('gate').hidden = false;
    for (const v of document.querySelectorAll('.view')) v.remove();
    select.parentElement.hidden = true;
    return;
  }
  const chosen = sessionStorage.getItem('dash:who');
  users.forEach((u, i) => {
    const o = el('option', null, u.label);
    o.value = String(i);
    select.append(o);
  });
  const first = Math.max(0, users.findIndex((u) => u.label === chosen));
  select.value = String(first);
  select.addEventListener('change', () => {
    const u = users[Number(select.value)];
    sessionStorage.setItem('dash:who', u.label);
    start(u);
  });
  start(users[first]);
}

// ---- rendering ----------------------------------------------------------------------------------

let scheduled = false;
function touch() { changed = true; schedule(); }
function schedule() {
  if (scheduled) return;
  scheduled = true;
  setTimeout(render, 30);
}
const tab = () => (['overview', 'monitoring', 'jobs'].includes(location.hash.slice(1)) ? location.hash.slice(1) : 'overview');

function render() {
  scheduled = false;
  const t = tab();
  for (const a of document.querySelectorAll('.tabs a')) a.classList.toggle('active', a.dataset.tab === t);
  for (const name of ['overview', 'monitoring', 'jobs']) {
    const v = $(`view-${name}`);
    if (v) v.hidden = name !== t;
  }
  renderEnrichment();
  if (t === 'overview') renderOverview();
  else if (t === 'monitoring') renderMonitoring();
  else renderJobs();
}

function progressOf(s) {
  const p = S.progress[s.id];
  const target = num(s.target_metrics?.target) || num(s.progress?.total) || 0;
  const completed = p ? p.completed : num(s.progress?.completed) || 0;
  const total = p ? p.total : target;
  const pct = p ? p.percentage : total ? Math.min(100, (100 * completed) / total) : 0;
  return { completed, total, pct, quality: p?.quality_score ?? null, stages: p?.items_by_stage || {} };
}

function focused() {
  if (S.focus && S.streams[S.focus]) return S.streams[S.focus];
  const all = Object.values(S.streams).sort(newest);
  return all.find((s) => s.status === 'active') || all[0] || null;
}

function orgChip(orgId) {
  return claims.role === 'service_role' || [].concat(claims.org_ids || []).length > 1 ? orgId : '';
}

function renderOverview() {
  const streams = Object.values(S.streams).sort(newest);
  const f = focused();
  setText($('stream-count'), streams.length);
  $('stream-list-empty').hidden = streams.length > 0;
  keyed($('stream-list'), streams, (s) => s.id, (s) => {
    const b = el('button', 'stream-item');
    b.type = 'button';
    const top = el('div', 'row');
    top.append(el('span', 'name'), badge('active'));
    const bar = el('div', 'mini-bar');
    bar.append(el('span'));
    b.append(top, bar, el('div', 'meta'));
    b.addEventListener('click', () => { S.focus = b.dataset.key; syncTopics(); touch(); });
    return b;
  }, (b, s) => {
    const p = progressOf(s);
    setClass(b, `stream-item${f && f.id === s.id ? ' focused' : ''}`);
    b.dataset.streamName = s.name;
    setText(b.querySelector('.name'), s.name);
    setBadge(b.querySelector('.badge'), s.status);
    setClass(b.querySelector('.mini-bar'), `mini-bar${p.pct >= 100 ? ' complete' : ''}`);
    b.querySelector('.mini-bar > span').style.width = `${p.pct}%`;
    const org = orgChip(s.org_id);
    setText(b.querySelector('.meta'), `${p.completed} / ${p.total} · ${ago(s._at)}${org ? ` · ${org}` : ''}`);
  });
  renderCard(f);
  renderTasks();
}

function renderCard(s) {
  $('card-empty').hidden = !!s;
  $('card-body').hidden = !s;
  if (!s) return;
  const card = $('stream-card');
  if (card.dataset.stream !== s.id) {
    card.dataset.stream = s.id;
    $('bump-host').replaceChildren();
    $('card-feed').replaceChildren();
    $('card-companies').replaceChildren();
  }
  const p = progressOf(s);
  setText($('card-name'), s.name);
  const org = orgChip(s.org_id);
  setText($('card-sub'), `Target ${p.total} companies · started ${ago(s.created_at)}${org ? ` · ${org}` : ''}`);
  setBadge($('card-status'), s.status);
  setText($('card-count').firstChild, p.completed);
  setText($('card-count').lastChild, ` / ${p.total}`);
  setText($('card-pct'), `${Math.round(p.pct)}%`);
  const bar = $('card-bar');
  setClass(bar, `bar${p.pct >= 100 ? ' complete' : s.status === 'active' ? ' active' : ''}`);
  bar.firstChild.style.width = `${Math.min(100, p.pct)}%`;
  const bump = bumps[s.id];
  bumps = {};
  if (bump > 0) { // one "+N" at a time: a new burst replaces the one still floating
    const b = el('span', 'bump', `+${bump}`);
    $('bump-host').replaceChildren(b);
    setTimeout(() => b.remove(), 1800);
  }
  keyed($('card-ticks'), [25, 50, 75, 100], (m) => m, (m) => el('span', 'tick', `${m}%`), (e, m) => {
    setClass(e, `tick${p.pct >= m ? ' reached' : ''}`);
    setText(e, p.pct >= m ? `✓ ${m}%` : `${m}%`);
  });
  const q = $('card-quality');
  setText(q, p.quality == null ? '–' : Number(p.quality).toFixed(1));
  setClass(q, `value ${scoreClass(p.quality)}`);
  setText($('card-found'), p.completed);
  const stages = Object.entries(p.stages).sort(([a], [b]) => (STAGES.indexOf(a) + 99) % 99 - (STAGES.indexOf(b) + 99) % 99);
  keyed($('card-stages'), stages, ([k]) => k, () => el('span', 'stage'), (e, [k, n]) => {
    setClass(e, `stage s-${k.replace(/[^\w-]/g, '')}`);
    setText(e, `${k} ${n}`);
  });

  const agents = Object.entries(S.agents[s.id] || {});
  const agentsBox = $('card-agents');
  if (!agents.length) agentsBox.replaceChildren(el('span', 'muted', 'No agent has reported yet.'));
  else {
    if (agentsBox.firstChild && !agentsBox.firstChild.dataset.key) agentsBox.replaceChildren();
    keyed(agentsBox, agents, ([id]) => id, () => {
      const a = el('span', 'agent');
      a.append(el('span', 'dot'), el('span', 'aname'), el('span', 'role'));
      return a;
    }, (e, [, a]) => {
      const active = (a.status === 'started' || a.status === 'progress') && fresh(a.at, 120000);
      setClass(e, `agent ${active ? 'active' : a.status === 'failed' ? 'failed' : a.status === 'completed' ? 'completed' : ''}`);
      setText(e.children[1], a.name);
      setText(e.children[2], active ? `· ${a.type}` : a.status === 'completed' ? '· done' : a.status === 'failed' ? '· failed' : '· idle');
    });
  }

  keyed($('card-feed'), S.feed[s.id] || [], (a) => a.id, (a) => {
    const li = el('li', String(a.activity_type).replace(/[^\w-]/g, ''));
    const msg = el('span', 'msg');
    msg.append(el('b', null, a.agent_name), ` ${a.message}`);
    li.append(el('span', 'kind', a.activity_type), msg, el('span', 'when'));
    return li;
  }, (li, a) => setText(li.lastChild, ago(a.timestamp)));

  keyed($('card-companies'), S.items[s.id] || [], (i) => i.id, () => {
    const c = el('div', 'company');
    c.append(el('span', 'cname'), el('span', 'score'));
    return c;
  }, (c, i) => {
    setText(c.firstChild, i.company_name);
    const score = i.quality_score == null ? null : num(i.quality_score);
    setText(c.lastChild, score == null ? i.stage : score.toFixed(0));
    setClass(c.lastChild, `score ${scoreClass(score)}`);
  });
}

function renderTasks() {
  const tasks = Object.values(S.tasks).sort(newest).slice(0, 8);
  setText($('task-count'), Object.keys(S.tasks).length);
  $('task-empty').hidden = tasks.length > 0;
  keyed($('task-list'), tasks, (t) => t.id, () => {
    const li = el('li', 'task');
    const top = el('div', 'row');
    const badges = el('div', 'badges');
    badges.append(badge('pending'), el('span', 'badge draft', 'Draft ready'));
    top.append(el('span', 'who-line'), badges);
    li.append(top, el('div', 'muted'), el('div', 'draft-text'));
    return li;
  }, (li, t) => {
    setClass(li, `task ${t.status}`);
    setText(li.querySelector('.who-line'), t.contact_id || 'Contact');
    setBadge(li.querySelector('.badges').firstChild, t.status);
    const hasDraft = typeof t.draft === 'string' && t.draft !== '';
    li.querySelector('.badge.draft').hidden = !hasDraft;
    setText(li.querySelector('.muted'), `${t.agent_id} · ${ago(t._at || t.updated_at)}`);
    const d = li.querySelector('.draft-text');
    d.hidden = !hasDraft;
    setText(d, hasDraft ? t.draft : '');
  });
}

function renderEnrichment() {
  const now = Date.now();
  const list = Object.values(S.enrich)
    .filter((j) => !FINISHED.has(j.status) || (j._done && now - j._done < 5000))
    .sort(newest);
  const shown = list.slice(0, 2);
  const box = $('enrichment');
  const more = box.querySelector('.enrich-more');
  keyed(box, shown, (j) => j.id, () => {
    const c = el('div', 'enrich-chip');
    c.dataset.testid = 'enrichment-chip';
    c.append(el('span', 'ring'), el('span', 'etext'));
    return c;
  }, (c, j) => {
    const pr = j.progress || {};
    const total = num(pr.total) || 0;
    const done = num(pr.completed) || 0;
    const pct = total ? Math.min(100, Math.round((100 * done) / total)) : 0;
    setClass(c, `enrich-chip ${j.status === 'completed' ? 'done' : FINISHED.has(j.status) ? 'failed' : ''}`.trim());
    c.firstChild.style.setProperty('--p', String(pct));
    setText(c.lastChild,
      j.status === 'completed' ? `Enriched ${total} contacts`
        : FINISHED.has(j.status) ? 'Enrichment failed'
          : j.status === 'pending' ? 'Enrichment queued' : `Enriching ${done}/${total}`);
  });
  if (more) more.remove();
  if (list.length > shown.length) box.append(el('span', 'enrich-more', `+${list.length - shown.length} more`));
}

function flashRow(tr, at) {
  if (tr._at && tr._at !== at) {
    tr.classList.add('flash');
    requestAnimationFrame(() => requestAnimationFrame(() => tr.classList.remove('flash')));
  }
  tr._at = at;
}
function cells(tr, n) {
  while (tr.children.length < n) tr.append(el('td'));
  return tr.children;
}
function barCell(td, pct) {
  if (!td.firstChild || td.firstChild.nodeType !== 1) {
    const bar = el('div', 'mini-bar');
    bar.append(el('span'));
    td.replaceChildren(bar, el('span', 'num'));
  }
  setClass(td.firstChild, `mini-bar${pct >= 100 ? ' complete' : ''}`);
  td.firstChild.firstChild.style.width = `${Math.min(100, pct)}%`;
}
function badgeCell(td, status) {
  if (!td.firstChild) td.append(badge(status));
  setBadge(td.firstChild, status);
}

function renderMonitoring() {
  const streams = Object.values(S.streams).sort(newest);
  const jobs = Object.values(S.jobs).sort(newest);
  const tasks = Object.values(S.tasks).sort(newest);
  setText($('tile-streams'), streams.filter((s) => s.status === 'active').length);
  setText($('tile-jobs'), jobs.filter((j) => j.status === 'running').length);
  setText($('tile-tasks'), tasks.filter((t) => t.status === 'in_progress').length);
  setText($('tile-drafts'), tasks.filter((t) => t.draft).length);
  keyed($('mon-streams'), streams, (s) => s.id, () => el('tr'), (tr, s) => {
    const c = cells(tr, 6);
    const p = progressOf(s);
    setText(c[0], s.name);
    setText(c[1], s.org_id);
    badgeCell(c[2], s.status);
    barCell(c[3], p.pct);
    setText(c[3].lastChild, `${p.completed} / ${p.total}`);
    setText(c[4], p.quality == null ? '–' : Number(p.quality).toFixed(1));
    setText(c[5], ago(s._at));
    flashRow(tr, s._at);
  });
  keyed($('mon-jobs'), jobs, (j) => j.id, () => el('tr'), (tr, j) => {
    const c = cells(tr, 7);
    setText(c[0], j.metadata?.name || `Job ${String(j.id).slice(0, 8)}`);
    setText(c[1], j.org_id);
    badgeCell(c[2], j.status);
    barCell(c[3], num(j.progress_percentage) || 0);
    setText(c[3].lastChild, `${Math.round(num(j.progress_percentage) || 0)}%`);
    setText(c[4], j.directories_completed);
    setText(c[5], j.directories_failed);
    setText(c[6], ago(j._at));
    flashRow(tr, j._at);
  });
  keyed($('mon-tasks'), tasks, (t) => t.id, () => el('tr'), (tr, t) => {
    const c = cells(tr, 5);
    setText(c[0], t.contact_id || '–');
    setText(c[1], t.agent_id);
    setText(c[2], t.org_id);
    badgeCell(c[3], t.status);
    setText(c[4], ago(t._at));
    flashRow(tr, t._at);
  });
}

function renderJobs() {
  const jobs = Object.values(S.jobs).sort(newest);
  $('jobs-empty').hidden = jobs.length > 0;
  keyed($('job-cards'), jobs, (j) => j.id, () => {
    const card = el('div', 'card job');
    const top = el('div', 'row');
    top.append(el('h3'), badge('pending'));
    const counts = el('div', 'counts');
    const ok = el('div', 'ok');
    ok.append(el('span', null, 'Submitted'), el('b'));
    const bad = el('div', 'bad');
    bad.append(el('span', null, 'Failed'), el('b'));
    const pct = el('div');
    pct.append(el('span', null, 'Progress'), el('b'));
    counts.append(ok, bad, pct);
    const bar = el('div', 'bar');
    bar.append(el('div', 'fill'));
    card.append(top, el('div', 'muted'), counts, bar, el('div', 'current'), el('ul', 'submissions'));
    return card;
  }, (card, j) => {
    setText(card.querySelector('h3'), j.metadata?.name || `Job ${String(j.id).slice(0, 8)}`);
    setBadge(card.querySelector('.badge'), j.status);
    const org = orgChip(j.org_id);
    setText(card.querySelector('.muted'), `${j.started_at ? `started ${ago(j.started_at)}` : 'not started'}${org ? ` · ${org}` : ''}`);
    const [ok, bad, pct] = card.querySelectorAll('.counts b');
    setText(ok, j.directories_completed);
    setText(bad, j.directories_failed);
    const p = num(j.progress_percentage) || 0;
    setText(pct, `${Math.round(p)}%`);
    const bar = card.querySelector('.bar');
    setClass(bar, `bar${p >= 100 ? ' complete' : j.status === 'running' ? ' active' : ''}`);
    bar.firstChild.style.width = `${Math.min(100, p)}%`;
    const subs = S.subs[j.id] || [];
    const current = j.status === 'running'
      ? (j.metadata?.current_directory || subs.find((x) => x.status === 'processing')?.directory_name) : null;
    const cur = card.querySelector('.current');
    if (current) {
      if (cur.dataset.dir !== current) {
        cur.dataset.dir = current;
        cur.replaceChildren(el('span', 'spinner'), el('span', null, 'Processing '), el('b', null, current));
      }
    } else if (cur.dataset.dir !== '') {
      cur.dataset.dir = '';
      cur.replaceChildren(el('span', 'muted', j.status === 'completed' ? 'All directories processed' : ''));
    }
    keyed(card.querySelector('.submissions'), subs, (x) => x.id, () => {
      const li = el('li');
      const name = el('span');
      name.append(el('span', 'dname'), el('span', 'err'));
      li.append(name, badge('pending'));
      return li;
    }, (li, x) => {
      setText(li.querySelector('.dname'), x.directory_name);
      setText(li.querySelector('.err'), x.error_log ? ` · ${x.error_log}` : '');
      setBadge(li.querySelector('.badge'), x.status);
    });
  });
}

function toast({ kind, icon, title, body }) {
  const box = $('toasts');
  const t = el('div', `toast ${kind}`);
  t.dataset.testid = 'toast';
  const text = el('div');
  text.append(el('div', 't-title', title), el('div', 't-body', body));
  t.append(el('div', 'icon', icon), text);
  const leave = () => { t.classList.add('leaving'); setTimeout(() => t.remove(), 300); };
  t.addEventListener('click', leave);
  t.title = 'Dismiss';
  box.append(t);
  const shown = [...box.children].filter((c) => !c.classList.contains('leaving'));
  for (const old of shown.slice(0, Math.max(0, shown.length - MAX_TOASTS))) old.remove();
  setTimeout(leave, TOAST_MS);
}

window.addEventListener('hashchange', render);
window.addEventListener('pagehide', () => { changed = true; saveBroadcasts(); });
setInterval(schedule, 1000);
setInterval(syncTopics, 10000);
setInterval(saveBroadcasts, 2000);
main();
