// relay.js: the browser client of relay, with an API after supabase-js.
//
// All channels of a page share one connection: one EventSource on /v1/stream or, when
// streams cannot get through, a long-poll loop on /v1/changes. The relay numbers the
// `sub=` parameters of a request from 0 and names, in the "ids" of every change, the
// subscriptions the change satisfies; this file routes changes by those numbers and
// never evaluates a filter itself.
//
// Positions (decimal strings) keep delivery exact:
// - `connectionPosition` is where the connection resumes: the last position it delivered.
// - every channel has its own `position`: all that matches the channel up to there has
//   been handed to its callbacks, and nothing at or below it is handed again.
// - a channel subscribed with `since` older than the connection is first caught up on
//   its own, over /v1/changes; only then does the one stream open, from the last position
//   delivered. So a reopen never replays what the page already has.
// - channel changes made in one tick (subscribe, removeChannel) reopen the connection once.
// - a channel subscribed with `snapshot: true` first gets the rows as they are now, from
//   GET /v1/snapshot with its own `sub=`/`select=`: each row reaches the matching
//   postgres_changes callbacks as { eventType: 'SNAPSHOT', new: row, old: {}, schema,
//   table, id: P }, before the channel is SUBSCRIBED. P, the position the rows reflect,
//   becomes the channel's position: a connection already past P catches the channel up
//   from P over /v1/changes; one behind P resumes from where it was, and this channel
//   skips what it gets up to P. So no change is missed or handed twice at the seam. The
//   connection pauses (and resumes from its position) while a snapshot loads; a reconnect
//   resumes and never loads it again. A 4xx (e.g. 413 above RELAY_SNAPSHOT_MAX_ROWS) makes
//   that channel alone CHANNEL_ERROR, with the relay's message.

export const LIVE = 'Live';
export const RECONNECTING = 'Reconnecting…';
export const OFFLINE = 'Offline';

const CHANNEL_ERROR = 'CHANNEL_ERROR';
const CATCH_UP_PAGE = 1000; // events per /v1/changes page while catching a channel up
const POLL_PAGE = 500;
const HANDLED = new Error('relay.js: handled'); // a failure already dealt with (a 401)

// Is position `a` after position `b`? Positions are decimal strings of any length;
// nothing is after a missing position, and anything is after "no position yet".
function isAfter(a, b) {
  if (b == null) return a != null;
  if (a == null) return false;
  if (a.length !== b.length) return a.length > b.length;
  return a > b;
}

function earliest(positions) {
  let first = null;
  for (const position of positions) {
    if (position != null && (first == null || isAfter(first, position))) first = position;
  }
  return first;
}

function tableOf(config) {
  return `${config.schema || 'public'}.${config.table}`;
}

function subscriptionOf(config) {
  const filter = config.filter ? `:${config.filter}` : '';
  return `${tableOf(config)}:${config.event || '*'}${filter}`;
}

// The query parameters of one request for `channels`, and the way back from its events:
// routes[i] is the channel and binding of the request's i-th `sub=`. Every binding gets
// its own `sub=`, followed by its own `select=` (select is positional: never shared).
function buildRequest(channels) {
  const params = [];
  const routes = [];
  const topics = new Set();
  for (const channel of channels) {
    for (const binding of channel.bindings) {
      if (binding.type === 'postgres_changes') {
        routes.push({ channel, binding });
        params.push(['sub', subscriptionOf(binding.config)]);
        if (binding.config.select) params.push(['select', [].concat(binding.config.select).join(',')]);
      } else if (binding.type === 'broadcast' && !topics.has(channel.topic)) {
        topics.add(channel.topic);
        params.push(['topic', channel.topic]);
      }
    }
  }
  return { channels, params, routes };
}

// Channel -> its bindings that a change satisfies, by the change's "ids".
function routeChange(request, data) {
  const targets = new Map();
  const add = ({ channel, binding }) => {
    if (!targets.has(channel)) targets.set(channel, []);
    if (!targets.get(channel).includes(binding)) targets.get(channel).push(binding);
  };
  if (Array.isArray(data.ids)) {
    for (const index of data.ids) {
      const route = request.routes[index];
      if (route) add(route);
    }
  } else {
    // A relay from before "ids" filtered for us but did not say which subscription
    // matched: route by table and event only.
    for (const route of request.routes) {
      const event = route.binding.config.event || '*';
      if (tableOf(route.binding.config) === tableOf(data) && (event === '*' || event === data.eventType)) add(route);
    }
  }
  return targets;
}

function routeBroadcast(request, data) {
  const targets = new Map();
  for (const channel of request.channels) {
    if (channel.topic !== data.topic) continue;
    const bindings = channel.bindings.filter(
      (b) => b.type === 'broadcast' && ((b.config.event || '*') === '*' || b.config.event === data.event),
    );
    if (bindings.length) targets.set(channel, bindings);
  }
  return targets;
}

function call(callback, ...args) {
  try {
    callback?.(...args);
  } catch (error) {
    // one failing callback must not stop delivery to the others
    setTimeout(() => { throw error; });
  }
}

function queryString(params, extra) {
  const query = new URLSearchParams(params);
  for (const [key, value] of Object.entries(extra)) if (value != null) query.append(key, value);
  return query.toString();
}

export function createRelay(url, options = {}) {
  const baseUrl = (url || location.origin).replace(/\/+$/, '');
  const settings = {
    fallbackAfter: 3, // failed stream opens (while /v1/changes answers) before long-polling
    openTimeout: 10000, // ms without SUBSCRIBED before long-polling (a buffering proxy)
    streamRetry: 60000, // ms between attempts to go back from long-poll to the stream
    pollWait: 25, // s a long-poll waits for changes
    storageKey: 'relay:position:' + baseUrl,
    ...options,
  };

  const channels = new Set();
  const statusListeners = [];
  let status = OFFLINE;
  let transport = null;
  let connectionPosition = initialPosition();

  // The connection. `generation` grows whenever it is torn down: async work started for
  // an older generation sees the change and gives up.
  let generation = 0;
  let phase = 'idle'; // idle | catching-up | connecting | live
  let syncScheduled = false;
  let closed = false;
  let preferStream = true; // false while long-polling
  let joining = []; // the channels of the current connection
  let eventSource = null;
  let trialSource = null; // a stream tried while long-polling
  let pollAbort = null;
  let retryTimer = null;
  let trialTimer = null;
  let failedOpens = 0;
  let errorsInARow = 0;
  let tokenFailures = 0;
  let tokenPromise = null;

  function initialPosition() {
    let position = settings.lastEventId;
    if (position == null && settings.storageKey) {
      try {
        position = sessionStorage.getItem(settings.storageKey);
      } catch { /* storage blocked */ }
    }
    return position || position === 0 ? String(position) : null;
  }

  function activeChannels() {
    return [...channels].filter((channel) => channel.state !== CHANNEL_ERROR);
  }

  // Where a reload may resume from without missing anything for any channel.
  function resumePosition() {
    return earliest([connectionPosition, ...activeChannels().map((c) => c.position)]);
  }

  function savePosition() {
    if (!settings.storageKey) return;
    try {
      sessionStorage.setItem(settings.storageKey, resumePosition() ?? '');
    } catch { /* storage full or blocked */ }
  }

  function setStatus(newStatus, newTransport) {
    if (newStatus === status && newTransport === transport) return;
    status = newStatus;
    transport = newTransport;
    for (const listener of [...statusListeners]) call(listener, status, transport);
  }

  function setChannelState(channel, state, error) {
    if (channel.state === state) return;
    channel.state = state;
    call(channel.callback, state, error);
  }

  // After a failure: Reconnecting (Offline after five in a row or without a network),
  // and the delay before the next attempt (0.5 s doubling up to 15 s, with jitter).
  function backoff(failedTransport = transport) {
    errorsInARow += 1;
    setStatus(errorsInARow > 4 || !navigator.onLine ? OFFLINE : RECONNECTING, failedTransport);
    const delay = Math.min(15000, 500 * 2 ** Math.min(errorsInARow - 1, 5));
    return delay * (0.75 + Math.random() / 2);
  }

  function getToken() {
    if (typeof settings.token !== 'function') return Promise.resolve(settings.token || null);
    if (!tokenPromise) {
      tokenPromise = Promise.resolve().then(() => settings.token());
      tokenPromise.catch(() => { tokenPromise = null; });
    }
    return tokenPromise;
  }

  function forgetToken() {
    tokenPromise = null;
  }

  function fetchOptions(token, signal) {
    return { signal, credentials: 'include', headers: token ? { authorization: 'Bearer ' + token } : {} };
  }

  async function fetchJson(path, params, extra, token, signal) {
    const response = await fetch(`${baseUrl}${path}?${queryString(params, extra)}`, fetchOptions(token, signal));
    const body = await response.json().catch(() => null);
    return { status: response.status, body };
  }

  function fetchChanges(params, extra, token, signal) {
    return fetchJson('/v1/changes', params, extra, token, signal);
  }

  // The same request as JSON, to learn why a stream did not open (token? channel? proxy?).
  async function probe(params, token) {
    try {
      return await fetchChanges(params, { limit: 1 }, token === undefined ? await getToken() : token);
    } catch {
      return {};
    }
  }

  function stop() {
    generation += 1;
    phase = 'idle';
    clearTimeout(retryTimer);
    clearTimeout(trialTimer);
    eventSource?.close();
    trialSource?.close();
    pollAbort?.abort();
    eventSource = trialSource = pollAbort = null;
  }

  // Channel changes call this: the connection is rebuilt once, after the current tick.
  // While channels are being caught up the running catch-up picks the changes up itself.
  function scheduleSync() {
    if (syncScheduled) return;
    syncScheduled = true;
    setTimeout(() => {
      syncScheduled = false;
      if (!closed && phase !== 'catching-up') connect();
    }, 0);
  }

  async function connect() {
    stop();
    const current = generation;
    if (!activeChannels().length) {
      setStatus(OFFLINE, null);
      return;
    }
    // a page without a position starts at the earliest `since` of its channels, if any
    connectionPosition ??= earliest(activeChannels().map((c) => c.position));
    for (const channel of activeChannels()) if (!channel.needsSnapshot) channel.position ??= connectionPosition;
    phase = 'catching-up';
    try {
      await catchUp(current);
    } catch (error) {
      if (error !== HANDLED && current === generation) {
        retryTimer = setTimeout(() => current === generation && connect(), backoff());
      }
      return;
    }
    if (current !== generation) return;
    phase = 'connecting';
    if (preferStream) {
      openStream(current, false);
    } else {
      poll(current);
      scheduleStreamTrial(current);
    }
  }

  // Load the snapshot of each channel that asked for one, then deliver to each channel
  // that is behind the connection what it missed, on its own.
  async function catchUp(current) {
    for (;;) {
      const pending = activeChannels().find((c) => c.needsSnapshot);
      const behind = activeChannels().find((c) => isAfter(connectionPosition, c.position));
      if (pending) await loadSnapshot(pending, current);
      else if (behind) await catchUpChannel(behind, current);
      else return;
      if (current !== generation) return;
    }
  }

  async function loadSnapshot(channel, current) {
    const request = buildRequest([channel]);
    const params = request.params.filter(([key]) => key !== 'topic');
    if (params.length) {
      const token = await getToken();
      if (current !== generation) return;
      const controller = (pollAbort = new AbortController());
      const response = await fetchJson('/v1/snapshot', params, {}, token, controller.signal);
      if (current !== generation || !channels.has(channel)) return;
      if (response.status === 401) {
        refusal(response, current);
        throw HANDLED;
      }
      if (response.status >= 400 && response.status < 500) {
        setChannelState(channel, CHANNEL_ERROR, new Error(response.body?.message || `relay: ${response.status}`));
        return;
      }
      if (response.status !== 200 || !response.body) throw new Error(`relay: ${response.status}`);
      const position = String(response.body.position);
      for (const item of response.body.rows) {
        const message = { schema: item.schema, table: item.table, eventType: 'SNAPSHOT', new: item.row, old: {}, errors: null, id: position };
        for (const binding of routeChange(request, item).get(channel) || []) call(binding.callback, message);
      }
      channel.position = position;
    }
    channel.needsSnapshot = false;
  }

  async function catchUpChannel(channel, current) {
    const request = buildRequest([channel]);
    const target = connectionPosition;
    if (!request.params.length) {
      channel.position = target; // nothing to fetch: a channel of system bindings only
      return;
    }
    while (isAfter(target, channel.position) && channels.has(channel)) {
      const token = await getToken();
      if (current !== generation) return;
      const controller = (pollAbort = new AbortController());
      const response = await fetchChanges(request.params, { after: channel.position, limit: CATCH_UP_PAGE }, token, controller.signal);
      if (current !== generation) return;
      if (response.status === 400 || response.status === 403) {
        setChannelState(channel, CHANNEL_ERROR, new Error(response.body?.message || `relay: ${response.status}`));
        return;
      }
      if (response.status === 401) {
        refusal(response, current);
        throw HANDLED;
      }
      if (response.status !== 200 || !response.body) throw new Error(`relay: ${response.status}`);
      const body = response.body;
      if (body.resync_required) {
        channel.position = String(body.position);
        for (const binding of channel.bindings) if (binding.type === 'system') call(binding.callback, { status: 'RESYNC_REQUIRED', ...body });
        continue;
      }
      for (const event of body.events) deliver(request, event.id, event.event, event.data, false);
      if (isAfter(String(body.position), channel.position)) channel.position = String(body.position);
      if (!body.more) {
        if (isAfter(target, channel.position)) channel.position = target;
        return;
      }
    }
  }

  // Hand a change or broadcast at position `id` to the channels of `request` it is for.
  // Every channel of the request has now seen `id`: its position moves there.
  function deliver(request, id, type, data, movesConnection = true) {
    id = String(id);
    const targets = type === 'postgres_changes' ? routeChange(request, data) : routeBroadcast(request, data);
    for (const channel of request.channels) {
      if (!isAfter(id, channel.position)) continue; // already delivered to this channel
      channel.position = id;
      if (!channels.has(channel)) continue;
      const message = type === 'broadcast' ? { type, ...data, id } : { ...data, id };
      for (const binding of targets.get(channel) || []) call(binding.callback, message);
    }
    if (movesConnection && isAfter(id, connectionPosition)) connectionPosition = id;
    savePosition();
  }

  function openStream(current, isTrial) {
    getToken().then(
      (token) => current === generation && startStream(current, isTrial, token),
      () => current === generation && streamFailed(current, false),
    );
  }

  function startStream(current, isTrial, token) {
    // a channel subscribed with an old `since` meanwhile is caught up first, on its own
    if (activeChannels().some((c) => c.needsSnapshot || isAfter(connectionPosition, c.position))) return connect();
    joining = activeChannels();
    const request = buildRequest(joining);
    const from = earliest(joining.map((c) => c.position)) ?? connectionPosition;
    if (from != null) connectionPosition = from;
    const streamUrl = `${baseUrl}/v1/stream?${queryString(request.params, { access_token: token, last_event_id: from })}`;
    const source = new EventSource(streamUrl, { withCredentials: true });
    if (isTrial) trialSource = source;
    else eventSource = source;
    let subscribed = false;
    const close = () => {
      source.close();
      clearTimeout(openTimer);
      return current === generation;
    };
    const openTimer = setTimeout(() => {
      // no SUBSCRIBED in time: a proxy buffering the stream? long-poll instead
      if (!close()) return;
      if (isTrial) return scheduleStreamTrial(current);
      joining.forEach((c) => setChannelState(c, 'TIMED_OUT'));
      switchToPolling();
    }, settings.openTimeout);

    source.addEventListener('system', (event) => {
      const data = JSON.parse(event.data);
      if (data.status === 'SUBSCRIBED' && !subscribed) {
        subscribed = true;
        clearTimeout(openTimer);
        if (isTrial) {
          pollAbort?.abort();
          trialSource = null;
          eventSource = source;
          preferStream = true;
        }
        failedOpens = 0;
        const position = String(data.position);
        connectionPosition ??= position;
        for (const channel of joining) channel.position ??= position;
        live('sse');
      }
      handleSystem(data, source, current);
    });
    for (const type of ['postgres_changes', 'broadcast']) {
      source.addEventListener(type, (event) => deliver(request, event.lastEventId, type, JSON.parse(event.data)));
    }
    source.onerror = () => {
      if (!close()) return;
      if (isTrial && !subscribed) scheduleStreamTrial(current);
      else streamFailed(current, subscribed);
    };
  }

  function handleSystem(data, source, current) {
    const status = data.status;
    if (status === 'RESYNC_REQUIRED' && data.position != null) {
      // a truncate only ever moves positions forward
      const position = String(data.position);
      const forwardOnly = data.reason === 'truncate';
      if (!forwardOnly || isAfter(position, connectionPosition)) connectionPosition = position;
      for (const channel of channels) {
        if (!forwardOnly || isAfter(position, channel.position)) channel.position = position;
      }
      savePosition();
    }
    for (const channel of channels) {
      for (const binding of channel.bindings) if (binding.type === 'system') call(binding.callback, data);
    }
    if (!source || source !== eventSource) return;
    if (status === 'TOKEN_EXPIRED') forgetToken();
    if (status === 'TOKEN_EXPIRED' || status === 'TOO_SLOW') connect();
    if (status === 'SHUTDOWN') {
      source.close();
      streamFailed(current, true, data.retry ?? 1000);
    }
  }

  function live(newTransport) {
    phase = 'live';
    errorsInARow = 0;
    tokenFailures = 0;
    setStatus(LIVE, newTransport);
    joining.forEach((c) => setChannelState(c, 'SUBSCRIBED'));
  }

  async function streamFailed(current, wasLive, wait) {
    if (current !== generation) return;
    const delay = backoff();
    if (!wasLive) {
      const response = await probe(buildRequest(activeChannels()).params);
      if (current !== generation) return;
      if (refusal(response, current)) return;
      failedOpens += response.status === 200 ? 1 : 0;
      if (failedOpens >= settings.fallbackAfter) return switchToPolling();
    }
    retryTimer = setTimeout(() => current === generation && openStream(current, false), wait || delay);
  }

  // A 401 asks the token provider again; a 400/403 finds the channels the relay refuses,
  // marks them CHANNEL_ERROR and reconnects without them. True when it took over.
  function refusal(response, current) {
    if (response?.status === 401) {
      if (typeof settings.token === 'function' && ++tokenFailures < 3) {
        forgetToken();
        retryTimer = setTimeout(() => current === generation && connect(), tokenFailures > 1 ? 1000 : 0);
        return true;
      }
      activeChannels().forEach((c) => setChannelState(c, CHANNEL_ERROR, new Error('relay: token refused (401)')));
      stop();
      setStatus(OFFLINE, null);
      return true;
    }
    if (response?.status !== 400 && response?.status !== 403) return false;
    findRefusedChannels(current);
    return true;
  }

  async function findRefusedChannels(current) {
    const token = await getToken().catch(() => null);
    let found = false;
    for (const channel of activeChannels()) {
      const response = await probe(buildRequest([channel]).params, token);
      if (response.status === 400 || response.status === 403) {
        found = true;
        setChannelState(channel, CHANNEL_ERROR, new Error(response.body?.message || `relay: ${response.status}`));
      }
    }
    if (current !== generation) return;
    if (!found) activeChannels().forEach((c) => setChannelState(c, CHANNEL_ERROR, new Error('relay: subscriptions refused')));
    connect();
  }

  function switchToPolling() {
    preferStream = false;
    failedOpens = 0;
    connect();
  }

  function scheduleStreamTrial(current) {
    clearTimeout(trialTimer);
    trialTimer = setTimeout(() => current === generation && !preferStream && openStream(current, true), settings.streamRetry);
  }

  async function poll(current) {
    joining = activeChannels();
    const request = buildRequest(joining);
    let wait = 0;
    while (current === generation && !preferStream) {
      let response = null;
      let body = null;
      const controller = (pollAbort = new AbortController());
      try {
        const from = earliest(joining.map((c) => c.position)) ?? connectionPosition;
        response = await fetchChanges(request.params, { after: from, limit: POLL_PAGE, wait }, await getToken(), controller.signal);
        body = response.status === 200 ? response.body : null;
      } catch { /* network error: back off below */ }
      if (current !== generation || preferStream) return;
      if (refusal(response, current)) return;
      if (!body) {
        await new Promise((resolve) => setTimeout(resolve, backoff('long-poll')));
        continue;
      }
      if (body.resync_required) {
        handleSystem({ status: 'RESYNC_REQUIRED', ...body });
        continue;
      }
      live('long-poll');
      for (const event of body.events) deliver(request, event.id, event.event, event.data);
      const position = String(body.position);
      if (isAfter(position, connectionPosition)) connectionPosition = position;
      for (const channel of joining) if (isAfter(position, channel.position)) channel.position = position;
      savePosition();
      wait = body.more ? 0 : settings.pollWait;
    }
  }

  function removeChannel(channel) {
    if (channels.delete(channel)) {
      setChannelState(channel, 'CLOSED');
      scheduleSync();
    }
    return Promise.resolve('ok');
  }

  addEventListener('online', () => {
    if (!closed && status !== LIVE && channels.size) connect();
  });

  function channel(name, channelOptions = {}) {
    const ch = {
      name,
      topic: channelOptions.topic || name,
      bindings: [],
      state: 'CLOSED',
      position: null,
      needsSnapshot: false,
      callback: null,
      on(type, config, callback) {
        if (typeof config === 'function') [callback, config] = [config, {}];
        if (!['postgres_changes', 'broadcast', 'system'].includes(type)) throw new Error('relay.js: unknown event type ' + type);
        ch.bindings.push({ type, config: config || {}, callback });
        return ch;
      },
      // Deliver the rows as they are now with `snapshot: true`, else from `since` (a
      // position) if given, else from where the page is now.
      subscribe(callback) {
        const since = channelOptions.since == null ? null : String(channelOptions.since);
        const laterThanPage = since != null && connectionPosition != null && isAfter(since, connectionPosition);
        ch.needsSnapshot = !!channelOptions.snapshot;
        ch.position = ch.needsSnapshot ? null : since == null || laterThanPage ? connectionPosition : since;
        ch.callback = callback;
        ch.state = 'JOINING';
        closed = false;
        channels.add(ch);
        scheduleSync();
        return ch;
      },
      unsubscribe: () => removeChannel(ch),
    };
    return ch;
  }

  return {
    channel,
    removeChannel,
    removeAllChannels: () => Promise.all([...channels].map(removeChannel)),
    getChannels: () => [...channels],
    onStatus(listener) {
      statusListeners.push(listener);
      call(listener, status, transport);
      return () => {
        const index = statusListeners.indexOf(listener);
        if (index >= 0) statusListeners.splice(index, 1);
      };
    },
    // Resume from `position` (e.g. select relay.current_position() the page rendered at).
    reconnect(position) {
      if (position != null) {
        connectionPosition = String(position);
        for (const ch of channels) ch.position = connectionPosition;
      }
      preferStream = true;
      failedOpens = 0;
      connect();
    },
    disconnect() {
      closed = true;
      stop();
      for (const ch of channels) setChannelState(ch, 'CLOSED');
      setStatus(OFFLINE, null);
    },
    get status() { return status; },
    get transport() { return transport; },
    get position() { return resumePosition(); },
  };
}
