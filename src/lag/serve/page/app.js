// The live page: polls /status.json and /history.json once per collector interval and redraws.
// Text goes in through textContent only, so nothing a server reports can become markup.
"use strict";

// The charts span the history the page has, from half a minute up to five minutes.
const SPAN_MIN_MS = 30 * 1000;
const SPAN_MAX_MS = 5 * 60 * 1000;
const COLORS = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#db2777"];
const SVG = "http://www.w3.org/2000/svg";

const state = { samples: [], since: 0, interval: 1000, colors: new Map() };

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  // The content security policy refuses style attributes; the style object (CSSOM) is allowed.
  for (const [k, v] of Object.entries(attrs || {})) k === "style" ? (node.style.cssText = v) : node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return n + " B";
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return v.toFixed(v < 10 ? 2 : 1) + " " + units[i];
}

function ms(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1000) return Math.round(n) + " ms";
  if (n < 60000) return (n / 1000).toFixed(n < 10000 ? 2 : 1) + " s";
  if (n < 3600000) return (n / 60000).toFixed(1) + " min";
  return (n / 3600000).toFixed(1) + " h";
}

function color(standby) {
  if (!state.colors.has(standby)) state.colors.set(standby, COLORS[state.colors.size % COLORS.length]);
  return state.colors.get(standby);
}

// primary, sync, potential, quorum, async, standby (no walsender entry), unreachable, unknown
function roleOf(node, report) {
  if (!node.reachable) return "unreachable";
  if (node.role === "primary") return "primary";
  if (node.role !== "standby") return "unknown";
  const s = report.standbys.find((s) => s.node === node.name);
  return (s && s.sync_state) || "standby";
}

function renderTopology(report) {
  const order = { primary: 0 };
  const nodes = [...report.nodes].sort((a, b) => (order[roleOf(a, report)] ?? 1) - (order[roleOf(b, report)] ?? 1));
  const cards = nodes.map((n) => {
    const role = roleOf(n, report);
    const facts = el("dl");
    const fact = (k, v) => { if (v !== null && v !== undefined && v !== "") facts.append(el("dt", {}, k), el("dd", {}, String(v))); };
    fact("timeline", n.timeline);
    fact("WAL at", n.lsn);
    fact("version", n.server_version && n.server_version.split(" ")[0]);
    if (n.role === "standby") fact("receiving", n.receiver_status ? n.receiver_status + (n.upstream ? " from " + n.upstream : "") : "no walreceiver");
    if (n.replay_paused) fact("replay", "paused");
    if (!n.reachable) fact("error", n.error);
    return el("div", { class: "node " + role, "data-node": n.name, "data-role": role },
      el("h3", {}, n.name), el("span", { class: "role" }, role === "sync" ? "sync standby" : role), facts);
  });
  document.getElementById("topology").replaceChildren(...cards);
}

function renderStandbys(report) {
  const rows = report.standbys.map((s) => {
    const label = s.application_name || s.node || "?";
    const down = s.reachable === false;
    const time = s.replay_paused ? "paused" : ms(s.replay_lag_ms);
    return el("tr", { class: down ? "unreachable" : "", "data-standby": label },
      el("td", {}, el("i", { style: "color:" + color(label) }, "● "), label),
      el("td", {}, s.node || "–"),
      el("td", {}, down ? "unreachable" : s.state || "–"),
      el("td", {}, s.sync_state || "–"),
      el("td", { class: "num", "data-figure": "replay-bytes" }, bytes(s.replay_lag_bytes)),
      el("td", { class: "num", "data-figure": "replay-time" }, time));
  });
  document.querySelector("#standbys tbody").replaceChildren(...rows);
}

function renderProblems(report) {
  const items = report.problems.map((p) => el("li", {}, p.message));
  document.getElementById("problems").replaceChildren(...items);
  document.getElementById("problems-section").hidden = items.length === 0;
}

// One line per standby over the span; a gap where the figure is unknown.
function renderChart(id, pick, format) {
  const svg = document.getElementById(id);
  const [w, h, left, top, bottom] = [640, 180, 64, 10, 22];
  const now = state.samples.length ? state.samples[state.samples.length - 1].t : Date.now();
  const first = state.samples.length ? state.samples[0].t : now;
  const span = Math.min(SPAN_MAX_MS, Math.max(SPAN_MIN_MS, now - first));
  const from = now - span;
  const shown = state.samples.filter((s) => s.t >= from);
  let max = 0;
  for (const s of shown) for (const p of s.lag) max = Math.max(max, pick(p) ?? 0);
  const top_value = max > 0 ? max * 1.1 : 1;
  const x = (t) => left + ((t - from) / span) * (w - left - 4);
  const y = (v) => h - bottom - (v / top_value) * (h - top - bottom);
  const parts = [
    el("svg:line", { class: "axis", x1: left, y1: y(0), x2: w - 4, y2: y(0) }),
    el("svg:line", { class: "axis", x1: left, y1: top, x2: left, y2: y(0) }),
    el("svg:text", { x: left - 6, y: top + 10, "text-anchor": "end" }, max > 0 ? format(max) : ""),
    el("svg:text", { x: left - 6, y: y(0), "text-anchor": "end" }, "0"),
    el("svg:text", { x: left, y: h - 6 }, "−" + ms(span)),
    el("svg:text", { x: w - 4, y: h - 6, "text-anchor": "end" }, "now"),
  ];
  const names = [...new Set(shown.flatMap((s) => s.lag.map((p) => p.standby)))];
  for (const name of names) {
    let run = [];
    const flush = () => {
      if (run.length) parts.push(el("svg:polyline", { points: run.join(" "), stroke: color(name), "data-standby": name }));
      run = [];
    };
    for (const s of shown) {
      const p = s.lag.find((p) => p.standby === name);
      const v = p ? pick(p) : null;
      if (v === null || v === undefined) { flush(); continue; }
      run.push(x(s.t).toFixed(1) + "," + y(v).toFixed(1));
      if (run.length === 1) run.push((x(s.t) + 1).toFixed(1) + "," + y(v).toFixed(1));
    }
    flush();
  }
  svg.replaceChildren(...parts);
  const legend = names.map((n) => el("span", {}, el("i", { style: "background:" + color(n) }), n));
  document.getElementById("legend").replaceChildren(...legend);
}

async function json(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(url + ": " + response.status + " " + (await response.text()).trim());
  return response.json();
}

async function tick() {
  try {
    const history = await json("history.json?since=" + state.since);
    state.interval = history.interval_ms;
    state.samples.push(...history.samples);
    if (state.samples.length) state.since = state.samples[state.samples.length - 1].t;
    state.samples = state.samples.filter((s) => s.t >= state.since - history.window_ms);
    const report = await json("status.json");
    document.getElementById("round").textContent =
      "last round " + new Date(state.since).toLocaleTimeString() + " · took " + ms(report.round_ms) +
      " · every " + ms(state.interval) + (report.primary ? " · primary " + report.primary : " · no primary");
    renderTopology(report);
    renderStandbys(report);
    renderProblems(report);
    renderChart("chart-bytes", (p) => p.bytes, bytes);
    renderChart("chart-time", (p) => p.ms, ms);
  } catch (e) {
    document.getElementById("round").textContent = "pgrepl is not answering: " + e.message;
  }
  setTimeout(tick, state.interval);
}

tick();
