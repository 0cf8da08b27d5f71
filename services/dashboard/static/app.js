// emomon dashboard: one lane per speaker, fed by Server-Sent Events from /api/stream.
// Plain JS, no dependencies (works offline). Text from events is only ever set as textContent.
"use strict";

const LABELS = ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear", "uncertain"];
const SPARK_POINTS = 60;
const TRANSCRIPT_LINES = 5;
// session and speaker names come from the wire: maps without a prototype, so "__proto__" or
// "constructor" is an ordinary name, not Object.prototype
const dict = () => Object.create(null);
const model = { sessions: dict(), status: {}, rules: [], history: 500 };
let pageConnected = false;
let everConnected = false; // before the first snapshot the page is connecting, not "lost"
let pending = false;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// a label as a CSS class / variable name: only the known ones (events from MQTT are not trusted)
function lab(label) {
  return LABELS.includes(label) || label === "no_speech" ? label : "uncertain";
}

function clock(s) {
  const m = Math.floor(s / 60);
  return `${m}:${(s - m * 60).toFixed(0).padStart(2, "0")}`;
}

function signed(x) {
  return x == null ? "–" : (x >= 0 ? "+" : "") + x.toFixed(2);
}

function session(sid) {
  if (!model.sessions[sid]) model.sessions[sid] = { events: [], seen: new Set(), speakers: dict() };
  return model.sessions[sid];
}

function speaker(sid, name) {
  const s = session(sid);
  if (!s.speakers[name]) s.speakers[name] = { trend: null, alerts: [], active: new Set() };
  return s.speakers[name];
}

function addEvent(ev) {
  const s = session(ev.session);
  if (s.seen.has(ev.event_id)) return;
  s.seen.add(ev.event_id);
  speaker(ev.session, ev.speaker);
  s.events.push(ev);
  // a page left open all day: keep what the server keeps for a new page, not every event
  while (s.events.length > model.history) s.seen.delete(s.events.shift().event_id);
}

function addAlert(a) {
  const sp = speaker(a.session, a.speaker);
  sp.alerts.push(a);
  if (sp.alerts.length > 20) sp.alerts.shift();
  if (a.state === "firing") sp.active.add(a.rule); else sp.active.delete(a.rule);
}

function loadSnapshot(snap) {
  model.sessions = dict();
  model.status = snap.status;
  model.rules = snap.rules || [];
  model.history = snap.history || model.history;
  for (const [sid, s] of Object.entries(snap.sessions)) {
    for (const ev of s.events) addEvent(ev);
    for (const [name, sp] of Object.entries(s.speakers)) {
      const m = speaker(sid, name);
      m.trend = sp.trend;
      m.alerts = sp.alerts.slice();
      m.active = new Set(sp.active);
    }
  }
}

function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

function renderHeader() {
  const st = model.status || {};
  document.getElementById("source").textContent = st.source ? `source: ${st.source}` : "";
  const live = document.getElementById("live");
  live.textContent = !everConnected ? "connecting" : st.live ? "live" : "ended";
  live.className = "pill" + (st.live ? " live" : "");
  document.body.dataset.live = everConnected ? String(!!st.live) : "unknown";
  document.body.dataset.connected = String(pageConnected && st.connected !== false);
  document.getElementById("detail").textContent = st.detail || "";
  const banner = document.getElementById("banner");
  let msg = "";
  if (!pageConnected) msg = everConnected ? "Connection to emomon lost; reconnecting…" : "Connecting to emomon…";
  else if (st.connected === false) msg = `Disconnected from the event source; reconnecting… ${st.detail || ""}`;
  banner.textContent = msg;
  banner.hidden = !msg;
  const rules = document.getElementById("rules");
  rules.textContent = model.rules.length
    ? "Alert rules: " + model.rules.map((r) => `${r.name} (${r.when})`).join(" · ")
    : "No alert rules set (alerts.rules).";
}

function renderLegend() {
  const legend = document.getElementById("legend");
  if (legend.childElementCount) return;
  for (const l of LABELS) {
    legend.append(el("span", {}, el("i", { class: "seg-key", style: `background:var(--${l})` }), l));
  }
  legend.append(el("span", {}, el("i", { style: "background:var(--valence)" }), "valence"));
  legend.append(el("span", {}, el("i", { style: "background:var(--arousal)" }), "arousal"));
}

function sparkline(events) {
  const pts = events.filter((e) => e.valence != null).slice(-SPARK_POINTS);
  const box = svg("svg", { class: "spark", viewBox: "0 0 100 40", preserveAspectRatio: "none" });
  box.append(svg("line", { class: "zero", x1: 0, x2: 100, y1: 20, y2: 20 }));
  if (pts.length) {
    const x = (i) => (pts.length === 1 ? 50 : (i / (pts.length - 1)) * 100);
    const v = pts.map((e, i) => `${x(i)},${20 - e.valence * 18}`).join(" ");
    const a = pts.map((e, i) => `${x(i)},${38 - e.arousal * 36}`).join(" ");
    box.append(svg("polyline", { class: "v", points: v, "vector-effect": "non-scaling-stroke" }));
    box.append(svg("polyline", { class: "a", points: a, "vector-effect": "non-scaling-stroke" }));
  }
  const title = svg("title");
  title.textContent = "valence (-1..1, green) and arousal (0..1, orange) per utterance";
  box.append(title);
  return box;
}

function lane(sid, name, sp, events, span) {
  const last = events[events.length - 1];
  const state = el("div", { class: "state" });
  if (last) {
    state.append(
      el("span", { class: `chip ${lab(last.label)}`, style: `background:var(--${lab(last.label)})` }, last.label),
      ` ${last.confidence.toFixed(2)} · V ${signed(last.valence)} · A ${last.arousal == null ? "–" : last.arousal.toFixed(2)}`,
    );
  } else state.textContent = "no events yet";
  const active = el("div", { class: "alerts" });
  for (const r of [...sp.active].sort()) active.append(el("span", { class: "alert-on", "data-rule": r }, `⚠ ${r}`));

  const timeline = el("div", { class: "timeline" });
  for (const ev of events) {
    const left = (ev.start_s / span) * 100;
    const width = Math.max(((ev.end_s - ev.start_s) / span) * 100, 0.3);
    const seg = el("div", {
      class: `seg ${lab(ev.label)}`,
      "data-event": ev.event_id,
      style: `left:${left}%;width:${width}%;background:var(--${lab(ev.label)});opacity:${0.25 + 0.75 * ev.confidence}`,
      title: `${clock(ev.start_s)}–${clock(ev.end_s)} ${ev.label}` +
        (ev.outcome === "uncertain" ? ` (likeliest ${ev.top_label})` : "") +
        ` ${ev.confidence.toFixed(2)}` + (ev.text ? `: ${ev.text}` : ""),
    });
    timeline.append(seg);
  }
  const axis = el("div", { class: "axis" }, el("span", {}, "0:00"), el("span", {}, clock(span)));

  const trend = el("div", { class: "trend" });
  if (sp.trend) {
    const t = sp.trend;
    const bar = el("div", { class: "share" });
    for (const l of LABELS) {
      const share = t.share[l] || 0;
      if (share > 0) bar.append(el("span", { style: `width:${share * 100}%;background:var(--${l})`, title: `${l} ${(share * 100).toFixed(0)}%` }));
    }
    const top = Object.entries(t.share).sort((a, b) => b[1] - a[1]).filter(([, v]) => v > 0).slice(0, 3)
      .map(([k, v]) => `${k} ${(v * 100).toFixed(0)}%`).join(", ");
    trend.append(
      el("div", { class: "muted" }, `last ${t.window_s} s: ${t.events} utterances · mean V ${signed(t.mean_valence)} · A ${t.mean_arousal == null ? "–" : t.mean_arousal.toFixed(2)}`),
      bar,
      el("div", { class: "muted" }, top),
    );
  }
  const transcript = el("div", { class: "transcript" });
  for (const ev of events.filter((e) => e.text).slice(-TRANSCRIPT_LINES)) {
    transcript.append(el("p", {}, el("span", { class: "t" }, clock(ev.start_s)),
      el("span", { class: `chip ${lab(ev.label)}`, style: `background:var(--${lab(ev.label)})` }, ev.label), " ", ev.text));
  }
  const log = el("div", { class: "alerts alert-log" });
  for (const a of sp.alerts.slice(-4)) log.append(el("div", {}, `${clock(a.at_s)} ${a.rule} ${a.state} (${a.value})`));

  return el("div", { class: "lane", "data-speaker": name, "data-session": sid },
    el("div", { class: "who" }, el("b", {}, name), state, active),
    el("div", {}, timeline, axis, sparkline(events)),
    el("div", {}, trend, transcript, log),
  );
}

function render() {
  renderLegend();
  renderHeader();
  const main = document.getElementById("sessions");
  const sids = Object.keys(model.sessions).sort();
  document.getElementById("empty").hidden = sids.length > 0;
  for (const sid of sids) {
    const s = model.sessions[sid];
    const span = Math.max(10, ...s.events.map((e) => e.end_s));
    const section = el("section", { class: "session", "data-session": sid },
      el("h2", {}, sid, " ", el("span", { class: "muted" }, `${s.events.length} events · ${clock(span)}`)));
    for (const name of Object.keys(s.speakers)) {
      const evs = s.events.filter((e) => e.speaker === name);
      section.append(lane(sid, name, s.speakers[name], evs, span));
    }
    const old = main.querySelector(`section.session[data-session="${CSS.escape(sid)}"]`);
    if (old) old.replaceWith(section); else main.append(section);
  }
}

function connect() {
  const es = new EventSource("/api/stream");
  es.addEventListener("snapshot", (e) => {
    pageConnected = everConnected = true;
    loadSnapshot(JSON.parse(e.data));
    schedule();
  });
  es.addEventListener("emotion", (e) => { addEvent(JSON.parse(e.data)); schedule(); });
  es.addEventListener("trend", (e) => { const t = JSON.parse(e.data); speaker(t.session, t.speaker).trend = t; schedule(); });
  es.addEventListener("alert", (e) => { addAlert(JSON.parse(e.data)); schedule(); });
  es.addEventListener("status", (e) => { model.status = JSON.parse(e.data); schedule(); });
  es.onerror = () => { pageConnected = false; schedule(); };
}

connect();
render();
