// m3gate review page: a live feed of scored images (mode "live", served by
// `m3gate serve` at /) or a static report (mode "report", written by
// `m3gate report`). Every string from the data is set with textContent or
// as an attribute value, never parsed as HTML.
(function () {
  'use strict';

  var MODE = document.body.getAttribute('data-mode') === 'report' ? 'report' : 'live';
  var MAX_ITEMS = 2000; // cards kept by the live page
  var RATINGS = ['bad', 'poor', 'fair', 'good', 'excellent'];
  var TOKEN_KEY = 'm3gate.token';

  var state = {
    items: [],          // Item objects, oldest first
    byId: {},
    cards: {},          // id -> card element parts
    gate: { thresholds: {}, mode: 'all' },  // configured gate
    what: { thresholds: {}, mode: 'all' },  // what-if gate (sliders)
    aspects: [],        // aspects seen, sorted
    filter: { status: 'all', aspect: '', text: '' },
    sort: 'time-desc',
    token: '',
    seq: 0
  };
  try { state.token = window.sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { /* storage off */ }

  // el builds an element; text children become text nodes.
  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === undefined || v === null || v === false) { return; }
        if (k === 'text') { e.textContent = String(v); } else if (k === 'cls') { e.className = v; } else { e.setAttribute(k, v === true ? '' : String(v)); }
      });
    }
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) { return; }
      e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return e;
  }

  function fmt(x) { return (Math.round(x * 100) / 100).toFixed(2); }
  function num(x) { return String(Number(x)); }

  // passes reports whether item passes gate g over the shown aspects: like
  // the daemon's gate, an error fails, a missing aspect fails that aspect,
  // "all" needs every threshold met and "any" one.
  function passes(item, g) {
    if (item.error) { return false; }
    var names = state.aspects.filter(function (a) { return g.thresholds[a] !== undefined; });
    if (names.length === 0) { return true; }
    var anyOK = false;
    for (var i = 0; i < names.length; i++) {
      var a = item.aspects && item.aspects[names[i]];
      var ok = !!a && typeof a.mos === 'number' && a.mos >= g.thresholds[names[i]];
      if (!ok && g.mode !== 'any') { return false; }
      anyOK = anyOK || ok;
    }
    return anyOK;
  }

  // ---- layout ----
  var ui = {};
  function build() {
    ui.status = el('p', { cls: 'status', id: 'status', 'aria-live': 'polite' });
    ui.auth = el('form', { cls: 'auth', id: 'auth', hidden: true }, [
      el('label', { 'for': 'token' , text: 'This daemon needs its API token: ' }),
      el('input', { id: 'token', type: 'password', autocomplete: 'off' }),
      el('button', { type: 'submit', text: 'Use token' })
    ]);
    ui.auth.addEventListener('submit', function (ev) {
      ev.preventDefault();
      state.token = document.getElementById('token').value.trim();
      try { window.sessionStorage.setItem(TOKEN_KEY, state.token); } catch (e) { /* storage off */ }
      ui.auth.hidden = true;
      startLive();
    });
    var header = el('header', null, [
      el('h1', { text: MODE === 'report' ? 'm3gate report' : 'm3gate review' }),
      ui.status, ui.auth
    ]);

    // what-if gate
    ui.sliders = el('div', { cls: 'sliders', id: 'sliders' });
    ui.modeAll = el('input', { type: 'radio', name: 'mode', value: 'all', id: 'mode-all' });
    ui.modeAny = el('input', { type: 'radio', name: 'mode', value: 'any', id: 'mode-any' });
    [ui.modeAll, ui.modeAny].forEach(function (r) {
      r.addEventListener('change', function () { state.what.mode = r.value; updateGate(); });
    });
    ui.passCount = el('p', { cls: 'passcount', id: 'pass-count', 'aria-live': 'polite' });
    ui.config = el('pre', { cls: 'config', id: 'config-line', tabindex: '0', 'aria-label': 'configuration that sets this gate' });
    ui.reset = el('button', { type: 'button', id: 'reset', text: 'Back to the configured gate' });
    ui.reset.addEventListener('click', function () {
      state.what = { thresholds: Object.assign({}, state.gate.thresholds), mode: state.gate.mode };
      renderSliders(); updateGate();
    });
    var gateBox = el('section', { cls: 'panel', 'aria-labelledby': 'gate-h' }, [
      el('h2', { id: 'gate-h', text: 'What-if gate' }),
      ui.sliders,
      el('fieldset', { cls: 'mode' }, [
        el('legend', { text: 'An image passes when' }),
        el('label', null, [ui.modeAll, ' all aspects reach their threshold']),
        el('label', null, [ui.modeAny, ' any aspect does'])
      ]),
      ui.passCount,
      el('p', { cls: 'hint', text: 'config.yaml lines for this gate:' }),
      ui.config,
      ui.reset
    ]);

    // filters and sort
    ui.fStatus = el('select', { id: 'f-status' }, [
      el('option', { value: 'all', text: 'all' }), el('option', { value: 'passed', text: 'passed' }), el('option', { value: 'rejected', text: 'rejected' })
    ]);
    ui.fAspect = el('select', { id: 'f-aspect' });
    ui.fText = el('input', { id: 'f-text', type: 'search', placeholder: 'text in prompt' });
    ui.sort = el('select', { id: 'sort' });
    ui.fStatus.addEventListener('change', function () { state.filter.status = ui.fStatus.value; renderCards(); });
    ui.fAspect.addEventListener('change', function () { state.filter.aspect = ui.fAspect.value; renderCards(); });
    ui.fText.addEventListener('input', function () { state.filter.text = ui.fText.value; renderCards(); });
    ui.sort.addEventListener('change', function () { state.sort = ui.sort.value; renderCards(); });
    var filterBox = el('section', { cls: 'panel', 'aria-labelledby': 'filter-h' }, [
      el('h2', { id: 'filter-h', text: 'Show' }),
      el('div', { cls: 'filters' }, [
        el('label', { 'for': 'f-status', text: 'Verdict' }), ui.fStatus,
        el('label', { 'for': 'f-aspect', text: 'Aspect' }), ui.fAspect,
        el('label', { 'for': 'f-text', text: 'Prompt' }), ui.fText,
        el('label', { 'for': 'sort', text: 'Sort by' }), ui.sort
      ])
    ]);

    ui.hists = el('div', { cls: 'hists', id: 'hists' });
    var histBox = el('section', { cls: 'panel', 'aria-labelledby': 'hist-h' }, [
      el('h2', { id: 'hist-h', text: 'Scores (shown images)' }), ui.hists
    ]);

    ui.cards = el('ul', { cls: 'cards', id: 'cards', 'aria-label': 'scored images' });
    ui.empty = el('p', { cls: 'empty', id: 'empty', text: MODE === 'live' ? 'No image scored yet: images appear here as the daemon scores them.' : 'The results hold no image.' });
    var main = el('main', null, [
      el('aside', { cls: 'side' }, [gateBox, filterBox, histBox]),
      el('div', { cls: 'feed' }, [ui.empty, ui.cards])
    ]);
    document.body.appendChild(header);
    document.body.appendChild(main);
  }

  // ---- aspects, sliders, gate ----
  function noteAspects(item) {
    var changed = false;
    Object.keys(item.aspects || {}).forEach(function (a) {
      if (state.aspects.indexOf(a) < 0) { state.aspects.push(a); changed = true; }
    });
    if (changed) {
      state.aspects.sort();
      state.aspects.forEach(function (a) {
        if (state.what.thresholds[a] === undefined) {
          state.what.thresholds[a] = state.gate.thresholds[a] !== undefined ? state.gate.thresholds[a] : 2.5;
        }
      });
    }
    return changed;
  }

  function renderSliders() {
    ui.sliders.textContent = '';
    state.aspects.forEach(function (a) {
      var id = 'thr-' + a.replace(/[^a-z0-9_-]/gi, '_');
      var input = el('input', { type: 'range', min: '0', max: '5', step: '0.01', id: id, 'data-aspect': a });
      input.value = String(state.what.thresholds[a]);
      var out = el('output', { 'for': id, cls: 'thr-value', text: fmt(state.what.thresholds[a]) });
      input.addEventListener('input', function () {
        state.what.thresholds[a] = Number(input.value);
        out.textContent = fmt(state.what.thresholds[a]);
        updateGate();
      });
      ui.sliders.appendChild(el('div', { cls: 'slider' }, [el('label', { 'for': id, text: a }), input, out]));
    });
    ui.modeAll.checked = state.what.mode !== 'any';
    ui.modeAny.checked = state.what.mode === 'any';
    var cur = ui.fAspect.value;
    ui.fAspect.textContent = '';
    ui.fAspect.appendChild(el('option', { value: '', text: 'any' }));
    state.aspects.forEach(function (a) { ui.fAspect.appendChild(el('option', { value: a, text: 'has ' + a })); });
    ui.fAspect.value = cur;
    var s = ui.sort.value || state.sort;
    ui.sort.textContent = '';
    ui.sort.appendChild(el('option', { value: 'time-desc', text: 'newest first' }));
    ui.sort.appendChild(el('option', { value: 'time-asc', text: 'oldest first' }));
    state.aspects.forEach(function (a) {
      ui.sort.appendChild(el('option', { value: 'desc:' + a, text: a + ', best first' }));
      ui.sort.appendChild(el('option', { value: 'asc:' + a, text: a + ', worst first' }));
    });
    ui.sort.value = s;
  }

  function configText() {
    var g = state.what;
    var lines = ['scoring:', '  thresholds:'];
    var names = state.aspects.length ? state.aspects : Object.keys(g.thresholds).sort();
    names.forEach(function (a) { lines.push('    ' + a + ': ' + num(g.thresholds[a])); });
    lines.push('  gate: ' + (g.mode === 'any' ? 'any' : 'all'));
    var flags = names.map(function (a) { return a + '=' + num(g.thresholds[a]); }).join(',');
    lines.push('');
    lines.push('# or for one run: m3gate run ... --threshold ' + (flags || 'quality=2.5') + ' --mode ' + (g.mode === 'any' ? 'any' : 'all'));
    return lines.join('\n');
  }

  function updateGate() {
    var shown = visibleBase();
    var pass = 0, was = 0;
    shown.forEach(function (it) {
      if (passes(it, state.what)) { pass++; }
      if (passes(it, state.gate)) { was++; }
    });
    ui.passCount.setAttribute('data-pass', String(pass));
    ui.passCount.setAttribute('data-total', String(shown.length));
    ui.passCount.textContent = pass + ' of ' + shown.length + ' shown images pass' +
      (pass !== was ? ' (' + was + ' with the configured gate)' : '');
    ui.config.textContent = configText();
    state.items.forEach(function (it) { updateBadge(it); });
    if (state.filter.status !== 'all') { renderCards(); } else { renderHists(shown); }
  }

  // ---- cards ----
  function visibleBase() {
    var text = state.filter.text.trim().toLowerCase();
    var asp = state.filter.aspect;
    return state.items.filter(function (it) {
      if (text && (it.prompt || '').toLowerCase().indexOf(text) < 0) { return false; }
      if (asp && !(it.aspects && it.aspects[asp])) { return false; }
      return true;
    });
  }

  function visible() {
    var list = visibleBase();
    if (state.filter.status !== 'all') {
      var want = state.filter.status === 'passed';
      list = list.filter(function (it) { return passes(it, state.what) === want; });
    }
    var s = state.sort;
    var key = function (it) { return it.seq; };
    var dir = s === 'time-asc' ? 1 : -1;
    if (s.indexOf(':') > 0) {
      var a = s.slice(s.indexOf(':') + 1);
      dir = s.indexOf('asc:') === 0 ? 1 : -1;
      key = function (it) { var x = it.aspects && it.aspects[a]; return x ? x.mos : (dir > 0 ? Infinity : -Infinity); };
    }
    return list.slice().sort(function (x, y) {
      var d = key(x) - key(y);
      if (d === 0 || isNaN(d)) { d = x.seq - y.seq; }
      return dir * d;
    });
  }

  function cardFor(it) {
    var c = state.cards[it.id];
    if (c) { return c; }
    var img = el('img', { cls: 'thumb', alt: 'image ' + (it.name || it.id), width: '160', height: '160', loading: 'lazy' });
    if (it.thumb) { loadThumb(img, it.thumb); } else { img.classList.add('nothumb'); img.setAttribute('alt', 'no thumbnail'); }
    var badge = el('span', { cls: 'badge' });
    var aspects = el('div', { cls: 'aspects' });
    Object.keys(it.aspects || {}).sort().forEach(function (a) {
      var s = it.aspects[a];
      var pct = Math.max(0, Math.min(100, s.mos / 5 * 100));
      var fill = el('span', { cls: 'fill' });
      fill.style.width = pct + '%';
      var summary = el('summary', null, [
        el('span', { cls: 'aname', text: a }),
        el('span', { cls: 'bar', role: 'img', 'aria-label': a + ' ' + fmt(s.mos) + ' of 5' }, [fill]),
        el('span', { cls: 'mos', 'data-aspect': a, 'data-mos': String(s.mos), text: fmt(s.mos) }),
        el('span', { cls: 'rating r-' + (RATINGS.indexOf(s.rating) >= 0 ? s.rating : 'none'), text: s.rating || '' })
      ]);
      var body = [el('p', { cls: 'desc', text: s.description ? s.description : '(no description)' })];
      if (s.word_probs) {
        body.push(el('p', { cls: 'probs', text: RATINGS.filter(function (w) { return s.word_probs[w] !== undefined; }).map(function (w) { return w + ' ' + fmt(s.word_probs[w]); }).join(' · ') + (s.source ? ' — MOS from ' + s.source : '') }));
      }
      aspects.appendChild(el('details', { cls: 'aspect', 'data-aspect': a }, [summary].concat(body)));
    });
    var meta = el('dl', { cls: 'meta' });
    function row(k, v) { if (v !== undefined && v !== null && v !== '') { meta.appendChild(el('dt', { text: k })); meta.appendChild(el('dd', { cls: 'm-' + k, text: String(v) })); } }
    row('seed', it.seed);
    row('attempt', it.attempt || '');
    row('file', it.name);
    row('logged', it.recorded);
    row('time', it.time ? new Date(it.time).toLocaleString() : '');
    var li = el('li', { cls: 'card', 'data-id': it.id, tabindex: '-1' }, [
      el('div', { cls: 'top' }, [img, el('div', { cls: 'head' }, [badge, el('p', { cls: 'prompt', text: it.prompt || '(no prompt)' })])]),
      it.error ? el('p', { cls: 'error', text: 'error: ' + it.error }) : null,
      aspects, meta
    ]);
    c = { li: li, badge: badge };
    state.cards[it.id] = c;
    updateBadge(it);
    return c;
  }

  function updateBadge(it) {
    var c = state.cards[it.id];
    if (!c) { return; }
    var ok = passes(it, state.what);
    c.badge.textContent = ok ? 'pass' : 'reject';
    c.badge.className = 'badge ' + (ok ? 'pass' : 'reject');
    c.li.setAttribute('data-pass', ok ? 'true' : 'false');
  }

  function renderCards() {
    var list = visible();
    var frag = document.createDocumentFragment();
    list.forEach(function (it) { frag.appendChild(cardFor(it).li); });
    ui.cards.textContent = '';
    ui.cards.appendChild(frag);
    ui.cards.setAttribute('data-count', String(list.length));
    ui.empty.hidden = state.items.length > 0;
    renderHists(visibleBase());
  }

  // ---- histograms ----
  function renderHists(list) {
    ui.hists.textContent = '';
    state.aspects.forEach(function (a) {
      var bins = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0], n = 0, sum = 0;
      list.forEach(function (it) {
        var s = it.aspects && it.aspects[a];
        if (!s || typeof s.mos !== 'number') { return; }
        bins[Math.min(9, Math.max(0, Math.floor(s.mos * 2)))]++;
        n++; sum += s.mos;
      });
      var peak = Math.max.apply(null, bins) || 1;
      var thr = state.what.thresholds[a];
      var bars = el('div', { cls: 'hbars', role: 'img', 'aria-label': a + ' histogram: ' + bins.join(', ') + ' images per half point from 0 to 5' });
      bins.forEach(function (b, i) {
        var bar = el('span', { cls: 'hbar' + ((i + 1) / 2 <= thr ? ' below' : ''), title: (i / 2) + '–' + ((i + 1) / 2) + ': ' + b });
        bar.style.height = (b / peak * 100) + '%';
        bars.appendChild(bar);
      });
      var mark = el('span', { cls: 'hmark' });
      mark.style.left = (thr / 5 * 100) + '%';
      bars.appendChild(mark);
      ui.hists.appendChild(el('figure', { cls: 'hist', 'data-aspect': a }, [
        el('figcaption', { text: a + ': ' + n + ' images' + (n ? ', mean ' + fmt(sum / n) : '') }),
        bars,
        el('div', { cls: 'haxis' }, [el('span', { text: '0' }), el('span', { text: '2.5' }), el('span', { text: '5' })])
      ]));
    });
  }

  // ---- data in ----
  function addItems(items) {
    var newAspects = false;
    items.forEach(function (it) {
      if (!it || state.byId[it.id]) { return; }
      it.seq = state.seq++;
      state.byId[it.id] = it;
      state.items.push(it);
      if (noteAspects(it)) { newAspects = true; }
    });
    while (state.items.length > MAX_ITEMS) {
      var old = state.items.shift();
      delete state.byId[old.id];
      delete state.cards[old.id];
    }
    if (newAspects) { renderSliders(); }
    renderCards();
    updateGate();
  }

  // itemsFromEvent turns a /v1/events "score" message into items.
  function itemsFromEvent(ev) {
    return (ev.results || []).map(function (r) {
      var i = r.index;
      return {
        id: ev.request_id + '-' + i,
        time: ev.time || '',
        prompt: (ev.prompts && ev.prompts[i]) || ev.prompt || '',
        seed: ev.seed === undefined || ev.seed === null ? '' : String(ev.seed),
        attempt: ev.attempt || 0,
        thumb: ev.thumbs ? ev.thumbs[i] || '' : '',
        error: r.error || '',
        aspects: r.aspects || {}
      };
    });
  }

  function b64url(text) {
    var bytes = new TextEncoder().encode(text), bin = '';
    for (var i = 0; i < bytes.length; i++) { bin += String.fromCharCode(bytes[i]); }
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function authHeaders() {
    return state.token ? { 'Authorization': 'Bearer ' + state.token } : {};
  }

  // loadThumb shows a thumbnail: data: URLs and URLs without a token
  // directly, else fetched with the token.
  function loadThumb(img, url) {
    if (url.indexOf('data:image/') === 0) { img.src = url; return; }
    if (url.charAt(0) !== '/' || url.charAt(1) === '/') { return; } // only the daemon's own paths
    if (!state.token) { img.src = url; return; }
    fetch(url, { headers: authHeaders(), credentials: 'same-origin' }).then(function (r) {
      if (!r.ok) { throw new Error(String(r.status)); }
      return r.blob();
    }).then(function (b) { img.src = URL.createObjectURL(b); }).catch(function () { img.classList.add('nothumb'); });
  }

  function getJSON(path) {
    return fetch(path, { headers: authHeaders(), credentials: 'same-origin', cache: 'no-store' }).then(function (r) {
      if (r.status === 401) { ui.auth.hidden = false; throw new Error('the daemon wants its API token'); }
      if (!r.ok) { throw new Error(path + ': HTTP ' + r.status); }
      return r.json();
    });
  }

  var live = { ws: null, backoff: 500, st: {}, conn: 'connecting', started: false };

  function renderStatus() {
    var s = live.st || {};
    var m = s.model || {};
    var parts = [
      ['state', s.state || '?'],
      ['model', m.model_dir ? m.model_dir.split('/').filter(Boolean).pop() : (m.family || '?')],
      ['device', m.device || '?'],
      ['queue', String((s.http_queue_depth !== undefined ? s.http_queue_depth : s.queue_depth) || 0)],
      ['restarts', String(s.restarts || 0)],
      ['feed', live.conn]
    ];
    ui.status.textContent = '';
    parts.forEach(function (p) {
      ui.status.appendChild(el('span', { cls: 'kv', 'data-key': p[0] }, [el('span', { cls: 'k', text: p[0] + ' ' }), el('span', { cls: 'v', text: p[1] })]));
    });
    if (m.model_dir) { ui.status.setAttribute('title', m.model_dir); }
  }

  function pollStatus() {
    getJSON('/v1/status').then(function (s) { live.st = s; renderStatus(); }).catch(function () { renderStatus(); });
  }

  function connect() {
    var proto = window.location.protocol === 'https:' ? 'wss://' : 'ws://';
    var url = proto + window.location.host + '/v1/events';
    // A browser cannot set Authorization on a websocket: the token travels
    // as the subprotocol "bearer.<base64url of the token>".
    var ws = state.token ? new WebSocket(url, ['m3gate', 'bearer.' + b64url(state.token)]) : new WebSocket(url);
    live.ws = ws;
    ws.onopen = function () { live.backoff = 500; live.conn = 'live'; renderStatus(); };
    ws.onmessage = function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (ev.type === 'score' && ev.data) {
        addItems(itemsFromEvent(ev.data));
        pollStatus();
      } else if (ev.type === 'state' && ev.data) {
        live.st.state = ev.data.state;
        renderStatus();
        pollStatus();
      }
    };
    ws.onclose = function () {
      live.conn = 'reconnecting';
      renderStatus();
      setTimeout(connect, live.backoff);
      live.backoff = Math.min(live.backoff * 2, 15000);
    };
  }

  function startLive() {
    getJSON('/v1/recent').then(function (r) {
      setGate(r.gate);
      var items = [];
      (r.events || []).forEach(function (ev) { items = items.concat(itemsFromEvent(ev)); });
      addItems(items);
      if (!live.started) {
        live.started = true;
        connect();
        setInterval(pollStatus, 5000);
      }
      pollStatus();
    }).catch(function (e) {
      live.conn = String(e.message || e);
      renderStatus();
    });
  }

  function setGate(g) {
    g = g || {};
    state.gate = { thresholds: Object.assign({}, g.thresholds || {}), mode: g.mode === 'any' ? 'any' : 'all' };
    state.what = { thresholds: Object.assign({}, state.gate.thresholds), mode: state.gate.mode };
    state.aspects.forEach(function (a) {
      if (state.what.thresholds[a] === undefined) { state.what.thresholds[a] = 2.5; }
    });
    renderSliders();
  }

  function startReport() {
    var node = document.getElementById('m3gate-data');
    var v = {};
    try { v = JSON.parse(node ? node.textContent : '{}'); } catch (e) { v = {}; }
    setGate(v.gate);
    ui.status.textContent = '';
    [['source', v.source || ''], ['written', v.generated ? new Date(v.generated).toLocaleString() : ''], ['images', String((v.items || []).length)]].forEach(function (p) {
      if (p[1]) { ui.status.appendChild(el('span', { cls: 'kv', 'data-key': p[0] }, [el('span', { cls: 'k', text: p[0] + ' ' }), el('span', { cls: 'v', text: p[1] })])); }
    });
    addItems(v.items || []);
  }

  build();
  renderSliders();
  updateGate();
  if (MODE === 'report') { startReport(); } else { renderStatus(); startLive(); }
}());
