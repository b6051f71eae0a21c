// The /ui page: ask a model or an ensemble and watch it answer, one column per agent, then
// the vote and the winner; open recent traces and trace files in the same view.
//
// Plain JS, no build step. What it reads: /v1/models; /v1/chat/completions streamed, where an
// ensemble (`conclave/<name>`, asked with "conclave": {"events": true}) sends `conclave.*`
// SSE events (agent_start, delta, agent_done, decision, trace) before its answer's chunks;
// /v1/conclave/traces and /v1/conclave/traces/{id}. A live answer and a stored trace go
// through the same few functions (View below), so they look alike.
'use strict';

const $ = (id) => document.getElementById(id);
const KEY = 'conclave.apiKey';

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function status(msg, error) {
  $('status').textContent = msg;
  $('status').classList.toggle('error', !!error);
}

const secs = (s) => (s == null ? '-' : `${Number(s).toFixed(2)} s`);
const tokens = (u) =>
  u ? `${u.prompt_tokens} prompt (${u.cached_tokens || 0} cached) + ${u.completion_tokens} completion tokens` : '';
const short = (s, n) => {
  const flat = String(s ?? '').replace(/\s+/g, ' ').trim();
  return flat.length > n ? flat.slice(0, n - 1) + '…' : flat;
};

// ---- The API key: sent with every data call, asked for on a 401, kept in localStorage.

let asking = null; // the open key dialog's promise: concurrent 401s share one dialog

function needKey() {
  asking ??= new Promise((resolve, reject) => {
    const d = $('keys');
    $('key').value = '';
    d.addEventListener('close', () => {
      asking = null;
      const key = $('key').value.trim();
      if (d.returnValue === 'save' && key) {
        localStorage.setItem(KEY, key);
        resolve();
      } else {
        reject(new Error('this server needs an API key: reload the page to enter it'));
      }
    }, { once: true });
    d.returnValue = '';
    d.showModal();
  });
  return asking;
}

async function api(path, init = {}) {
  for (;;) {
    const key = localStorage.getItem(KEY);
    const headers = { ...init.headers };
    if (key) headers.Authorization = `Bearer ${key}`;
    const resp = await fetch(path, { ...init, headers });
    if (resp.status !== 401) return resp;
    // A key saved meanwhile (by another call's dialog) is tried before asking again.
    if (localStorage.getItem(KEY) === key) {
      localStorage.removeItem(KEY);
      await needKey();
    }
  }
}

// The message of an OpenAI-shaped error body, or the status.
async function failure(resp) {
  try {
    const body = await resp.json();
    return body.error?.message || `${resp.status} ${resp.statusText}`;
  } catch {
    return `${resp.status} ${resp.statusText}`;
  }
}

// Server-Sent Events of a fetch body (EventSource cannot POST): yields {event, data}.
async function* sse(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let event = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length) yield { event, data: data.join('\n') };
    }
  }
}

// ---- The view: an ensemble is a box of agent columns, its vote table and decision; a
// nested ensemble is a box inside its member's column (`path`: the member indexes from the
// top ensemble down, [] for the top one, as the events give it).

class Box {
  constructor(parent, title) {
    this.root = el('details', 'ensemble');
    this.root.open = true;
    this.summary = el('summary', null, title);
    this.cols = el('div', 'columns');
    this.tail = el('div', 'tail');
    this.root.append(this.summary, this.cols, this.tail);
    this.columns = [];
    parent.append(this.root);
  }

  column(i) {
    while (this.columns.length <= i) {
      const n = this.columns.length + 1;
      const c = { root: el('article', 'agent'), head: el('header'), text: el('div', 'text'), done: el('div', 'done') };
      c.root.setAttribute('aria-label', `agent ${n}`);
      c.head.append(el('b', null, `#${n}`));
      c.done.hidden = true;
      c.round = null;
      c.extracted = null;
      c.root.append(c.head, c.text, c.done);
      this.cols.append(c.root);
      this.columns.push(c);
    }
    return this.columns[i];
  }

  decide(d) {
    this.tail.replaceChildren();
    this.columns.forEach((c, i) => c.root.classList.toggle('winner', i === d.winner));
    const votes = Object.entries(d.votes || {}).sort((a, b) => b[1] - a[1]);
    if (votes.length) {
      const table = el('table', 'votes');
      table.append(el('caption', null, 'Votes'));
      const head = el('tr');
      head.append(el('th', null, 'answer'), el('th', null, 'votes'), el('th', null, 'agents'));
      table.append(el('thead'));
      table.tHead.append(head);
      const body = el('tbody');
      for (const [answer, n] of votes) {
        const row = el('tr');
        const who = this.columns.flatMap((c, i) => (c.extracted === answer ? [`#${i + 1}`] : []));
        row.append(el('td', null, short(answer, 80)), el('td', null, n.toFixed(3)), el('td', null, who.join(' ')));
        row.classList.toggle('winner', d.winner != null && answer === d.answer);
        body.append(row);
      }
      table.append(body);
      this.tail.append(table);
    }
    const won = d.winner != null ? `winner #${d.winner + 1} → ${short(d.answer, 80)}` : 'no winner';
    const agreement = Math.round((d.agreement || 0) * 100);
    this.tail.append(el('p', 'decision', `${d.strategy} · agreement ${agreement}% · ${won}`));
  }
}

class View {
  constructor(root) {
    this.root = root;
    this.boxes = new Map();
    this.title = 'ensemble';
  }

  box(path) {
    const key = path.join('/');
    let box = this.boxes.get(key);
    if (!box) {
      if (path.length === 0) {
        box = new Box(this.root, this.title);
      } else {
        const col = this.box(path.slice(0, -1)).column(path[path.length - 1]);
        col.root.classList.add('nested');
        col.text.hidden = true;
        box = new Box(col.root, col.title || 'nested ensemble');
      }
      this.boxes.set(key, box);
    }
    return box;
  }

  agentStart(e) {
    const col = this.box(e.path).column(e.agent);
    // A new round (debate, refine): the last round's text folds away above.
    if (col.round !== null && col.round !== e.round && col.text.textContent) {
      const earlier = el('details', 'earlier');
      earlier.append(el('summary', null, `round ${col.round + 1}`), el('pre', null, col.text.textContent));
      col.root.insertBefore(earlier, col.text);
      col.text.textContent = '';
    }
    col.round = e.round;
    // A member that is an ensemble names its box (`ensemble:<name>`, its strategy).
    col.title = `${e.model} · ${e.role}`;
    const nested = this.boxes.get(e.path.concat(e.agent).join('/'));
    if (nested) nested.summary.textContent = col.title;
    const about = [e.role, e.temperature == null ? null : `T ${Number(e.temperature).toFixed(2)}`];
    col.head.replaceChildren(el('b', null, `#${e.agent + 1} ${e.model}`), ` ${about.filter(Boolean).join(' · ')}`);
    col.done.hidden = true;
  }

  delta(e) {
    const col = this.box(e.path).column(e.agent);
    col.text.append(e.text);
    col.text.scrollTop = col.text.scrollHeight;
  }

  agentDone(e) {
    const col = this.box(e.path).column(e.agent);
    col.extracted = e.extracted ?? null;
    const parts = [];
    if (e.tokens != null) parts.push(`${e.tokens} tokens`);
    if (e.seconds != null) parts.push(secs(e.seconds));
    if (e.finish) parts.push(e.finish);
    if (e.verdict) parts.push(e.verdict.passed ? 'passed' : `failed: ${short(e.verdict.feedback, 120)}`);
    col.done.replaceChildren('answer ', el('b', 'extracted', e.extracted ?? '-'), ` · ${parts.join(' · ')}`);
    if (e.error) col.done.append(el('div', 'error', `error: ${e.error}`));
    col.done.hidden = false;
  }

  decide(e) {
    this.box(e.path).decide(e);
  }
}

// ---- Traces: an ensemble's Trace replayed through the view; an agent's RunTrace as a tree.

const isEnsemble = (t) => t && t.strategy !== undefined && Array.isArray(t.agents);
const isRun = (t) => t && Array.isArray(t.steps) && t.stop !== undefined;

function replay(view, t, path = []) {
  const box = view.box(path);
  box.summary.textContent = `ensemble ${t.name} · ${t.strategy} · ${tokens(t.usage)} · ${secs(t.seconds)}`;
  const rounds = t.rounds || [];
  rounds.forEach((agents, r) => agents.forEach((a, i) => replayAgent(view, path, i, r, a)));
  t.agents.forEach((a, i) => replayAgent(view, path, i, rounds.length, a));
  box.decide(t);
  if (t.judge) {
    const pick = t.judge.pick == null ? 'no readable pick' : `picked #${t.judge.pick + 1}`;
    box.tail.append(el('p', 'judge', `judge ${t.judge.model} · ${pick} · ${short(t.judge.text, 200)}`));
  }
  for (const n of t.notes || []) box.tail.append(el('p', 'muted', `note: ${n}`));
}

function replayAgent(view, path, agent, round, a) {
  if (a.ensemble) {
    replay(view, a.ensemble, path.concat(agent));
    view.box(path).column(agent).extracted = a.extracted ?? null;
    return;
  }
  view.agentStart({ path, agent, round, model: a.model, role: a.role, temperature: a.temperature });
  view.delta({ path, agent, round, text: a.text });
  view.agentDone({ path, agent, round, ...a });
}

function renderRun(parent, r) {
  const run = el('details', 'run');
  run.open = true;
  run.append(el('summary', null, `agent ${r.agent} · ${short(r.task, 120)}`));
  for (const s of r.steps) {
    const step = el('details', 'step');
    step.open = true;
    step.append(el('summary', null, `step ${s.step} · ${tokens(s.usage)} · ${secs(s.seconds)}`));
    if (s.text && s.text.trim()) step.append(el('p', 'muted', s.text));
    for (const c of s.calls || []) {
      const call = el('div', 'call');
      const ran = c.ok === true ? 'ok' : c.ok === false ? 'failed' : 'not run';
      call.append(el('code', null, `${c.name}(${JSON.stringify(c.arguments)})`),
        ` ${c.decision} by ${c.by} · ${ran} · ${secs(c.seconds)}`, el('pre', null, c.output));
      if (isRun(c.delegate)) renderRun(call, c.delegate);
      step.append(call);
    }
    // A step decided by several agents shows how; one agent's step is its call.
    if (isEnsemble(s.ensemble) && s.ensemble.agents.length > 1) {
      const holder = el('div');
      step.append(holder);
      replay(new View(holder), s.ensemble);
    }
    run.append(step);
  }
  run.append(el('p', 'answer', r.answer ?? '(no answer)'),
    el('p', 'muted', `stop: ${r.stop} after ${r.steps.length} step(s) · total ${tokens(r.usage)} · ${secs(r.seconds)}`));
  for (const n of r.notes || []) run.append(el('p', 'muted', `note: ${n}`));
  parent.append(run);
}

// Shows a trace (an ensemble's, an agent run's, or the server's stored {id, kind, trace}).
function showTrace(obj, where) {
  const t = obj && typeof obj.trace === 'object' && 'id' in obj ? obj.trace : obj;
  const out = $('view');
  const live = el('div');
  if (isEnsemble(t)) {
    replay(new View(live), t);
    const answer = el('div', 'answer', t.text || t.answer || '(no answer)');
    out.replaceChildren(live, answer);
  } else if (isRun(t)) {
    renderRun(live, t);
    out.replaceChildren(live);
  } else {
    throw new Error(`${where} is not a conclave trace: expected an ensemble trace (strategy, agents), ` +
      'an agent run trace (steps, stop) or a server trace (id, kind, trace)');
  }
}

// ---- Asking: streamed, with the ensemble's events when it is one.

let inFlight = null;

async function ask(ev) {
  ev.preventDefault();
  const model = $('model').value;
  const question = $('question').value.trim();
  if (!model || !question) return;
  inFlight?.abort();
  const ctl = (inFlight = new AbortController());
  const ensemble = model.startsWith('conclave/');
  const body = { model, stream: true, messages: [{ role: 'user', content: question }] };
  if (ensemble) body.conclave = { events: true };

  const live = el('div');
  const answer = el('div', 'answer');
  answer.hidden = true;
  $('view').replaceChildren(live, answer);
  const view = new View(live);
  view.title = model;
  const one = { path: [], agent: 0, round: 0 };
  if (!ensemble) view.agentStart({ ...one, model });
  const start = performance.now();
  status(`asking ${model}…`);
  let text = '';
  let traced = false;
  try {
    const resp = await api('/v1/chat/completions', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
      signal: ctl.signal,
    });
    if (!resp.ok) throw new Error(await failure(resp));
    for await (const { event, data } of sse(resp.body)) {
      if (data === '[DONE]') break;
      const msg = JSON.parse(data);
      switch (event) {
        case 'conclave.agent_start': view.agentStart(msg); continue;
        case 'conclave.delta': view.delta(msg); continue;
        case 'conclave.agent_done': view.agentDone(msg); continue;
        case 'conclave.decision': view.decide(msg); continue;
        case 'conclave.trace':
          // The whole record: drawn again from it, as a stored trace is.
          traced = true;
          showTrace(msg.trace, 'the answer');
          $('view').dataset.trace = msg.id;
          continue;
      }
      if (msg.error) throw new Error(msg.error.message);
      const choice = msg.choices?.[0];
      const piece = choice?.delta?.content;
      if (piece) {
        text += piece;
        if (!ensemble) view.delta({ ...one, text: piece });
      }
      if (!ensemble && choice?.finish_reason) view.agentDone({ ...one, finish: choice.finish_reason });
      // A server without events sends the trace on the last chunk.
      if (msg.conclave && !traced) {
        traced = true;
        showTrace(msg.conclave, 'the answer');
      }
    }
    if (ensemble) {
      const shown = $('view').querySelector('.answer') || answer;
      shown.textContent = text || shown.textContent;
      shown.hidden = false;
    }
    status(`${model} answered in ${((performance.now() - start) / 1000).toFixed(1)} s`);
    refreshTraces();
  } catch (e) {
    if (e.name !== 'AbortError') status(e.message, true);
  } finally {
    if (inFlight === ctl) inFlight = null;
  }
}

// ---- Models and recent traces.

async function loadModels() {
  const resp = await api('/v1/models');
  if (!resp.ok) throw new Error(`cannot list models: ${await failure(resp)}`);
  const ids = (await resp.json()).data.map((m) => m.id);
  // Ensembles first: watching them is what this page is for.
  const rank = (id) => (id.startsWith('conclave/') ? 0 : 1);
  ids.sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  $('model').replaceChildren(...ids.map((id) => new Option(id, id)));
}

async function refreshTraces() {
  const list = $('traces');
  const resp = await api('/v1/conclave/traces');
  if (!resp.ok) {
    const why = resp.status === 404 ? 'this server keeps no recent traces' : await failure(resp);
    list.replaceChildren(el('li', 'muted', why));
    return;
  }
  const items = (await resp.json()).data;
  list.replaceChildren(...items.map((t) => {
    const b = el('button');
    b.type = 'button';
    b.dataset.id = t.id;
    const when = new Date(t.created * 1000).toLocaleTimeString();
    b.append(el('span', null, short(t.question, 80) || '(no question)'),
      el('small', null, `${t.model} · ${when} · ${short(t.answer ?? '-', 40)}`));
    b.addEventListener('click', () => openTrace(t.id, b));
    const li = el('li');
    li.append(b);
    return li;
  }));
  if (!items.length) list.append(el('li', 'muted', 'none yet'));
}

async function openTrace(id, button) {
  try {
    const resp = await api(`/v1/conclave/traces/${encodeURIComponent(id)}`);
    if (!resp.ok) throw new Error(await failure(resp));
    showTrace(await resp.json(), `trace ${id}`);
    $('view').dataset.trace = id;
    for (const b of $('traces').querySelectorAll('button')) b.setAttribute('aria-current', String(b === button));
    status(`trace ${id}`);
  } catch (e) {
    status(e.message, true);
  }
}

async function loadFile() {
  const input = $('file');
  const file = input.files[0];
  if (!file) return;
  try {
    let obj;
    try {
      obj = JSON.parse(await file.text());
    } catch (e) {
      throw new Error(`${file.name} is not JSON (${e.message})`);
    }
    showTrace(obj, file.name);
    delete $('view').dataset.trace;
    status(`trace file ${file.name}`);
  } catch (e) {
    status(e.message, true);
  } finally {
    input.value = '';
  }
}

$('ask').addEventListener('submit', ask);
$('question').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    $('ask').requestSubmit();
  }
});
$('refresh').addEventListener('click', () => refreshTraces().catch((e) => status(e.message, true)));
$('file').addEventListener('change', loadFile);
$('forget').addEventListener('click', () => {
  localStorage.removeItem(KEY);
  needKey().then(loadModels).then(refreshTraces).catch((e) => status(e.message, true));
});
// One after the other, so that a server with a key asks for it once.
loadModels().then(refreshTraces).catch((e) => status(e.message, true));
