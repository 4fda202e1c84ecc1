// The girder dashboard page: one server-sent event stream (/live) feeds every panel.
"use strict";

const COLORS = { done: "#3f9d5a", running: "#2f6fd6", pending: "#b0b7c4", failed: "#d64545", cancelled: "#59606e" };
const PALETTE = ["#2f6fd6", "#e08a1e", "#3f9d5a", "#8a4fd6", "#d64545", "#1aa39a", "#7a5c3e", "#c2449a"];
const NODE_FIELDS = ["kind", "pool", "alive", "work", "running", "ran", "failed", "cache_hits", "shared", "stolen"];

let source = null;
let chosenJob = "";
let shownJob = "";
let cy = null;
let lastLayout = 0;
let layoutPending = false;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function connect() {
  if (source) source.close();
  const url = "live" + (chosenJob || shownJob ? "?job=" + encodeURIComponent(chosenJob || shownJob) : "");
  source = new EventSource(url);
  const status = document.getElementById("status");
  source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status down"; };
  source.onmessage = (message) => render(JSON.parse(message.data));
}

function render(data) {
  const alive = data.nodes.filter((n) => n.alive).length;
  document.getElementById("summary").textContent =
    `${alive} live nodes · ${data.events} events · ${data.active.length} active requests`;
  renderNodes(data.nodes);
  renderServers(data.servers);
  renderActive(data.active);
  renderSeries(data.series);
  renderDepths(data.depths);
  renderFailures(data.failures);
  renderJobs(data.jobs);
  if (data.graph) renderGraph(data.graph);
}

function renderNodes(nodes) {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren(...nodes.map((node) => {
    const row = el("tr", { "data-node": node.node, class: node.alive ? "" : "dead" });
    row.append(el("td", {}, node.node));
    for (const field of NODE_FIELDS) {
      let value = node[field];
      if (field === "alive") value = value ? "yes" : "no";
      const numeric = typeof node[field] === "number";
      row.append(el("td", { "data-field": field, class: numeric ? "num" : "" }, String(value || (numeric ? 0 : value === "" ? "-" : value))));
    }
    return row;
  }));
}

function renderServers(servers) {
  document.getElementById("servers-panel").hidden = servers.length === 0;
  const body = document.querySelector("#servers tbody");
  body.replaceChildren(...servers.map((server) => {
    const row = el("tr", { "data-server": server.address });
    const cells = [
      [server.slots, "num"], [server.grid_slot ? "yes" : "-", ""],
      [server.cpu === null ? "…" : server.cpu.toFixed(2), "num"], [server.ops_per_second, "num"],
      [(server.memory / 1048576).toFixed(1), "num"], [server.keys, "num"],
    ];
    row.append(el("td", {}, server.address));
    for (const [value, cls] of cells) row.append(el("td", { class: cls }, String(value)));
    return row;
  }));
}

function renderActive(active) {
  const body = document.querySelector("#active tbody");
  body.replaceChildren(...active.map((request) => {
    const row = el("tr", { "data-key": request.key });
    row.append(el("td", { title: request.key }, request.name), el("td", {}, request.node),
      el("td", {}, request.state), el("td", { class: "num" }, request.seconds.toFixed(1) + " s"));
    return row;
  }));
}

function line(points, color) {
  const path = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  path.setAttribute("points", points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
  path.setAttribute("fill", "none");
  path.setAttribute("stroke", color);
  path.setAttribute("stroke-width", "1.5");
  path.setAttribute("vector-effect", "non-scaling-stroke");
  return path;
}

function label(x, y, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", "text");
  node.setAttribute("x", x); node.setAttribute("y", y); node.textContent = text;
  return node;
}

// Lines of `series` ({name: [[t, value|null], ...]}) over a shared time axis, into `svg`.
function chart(svg, series, colors) {
  const width = 600, height = 160, pad = 14;
  const all = Object.values(series).flat().filter(([, v]) => v !== null && v !== undefined);
  svg.replaceChildren();
  if (!all.length) { svg.append(label(8, 20, "no data yet")); return; }
  const t0 = Math.min(...all.map(([t]) => t)), t1 = Math.max(...all.map(([t]) => t), t0 + 1);
  const top = Math.max(...all.map(([, v]) => v), 1);
  const x = (t) => ((t - t0) / (t1 - t0)) * (width - 2) + 1;
  const y = (v) => height - pad - (v / top) * (height - 2 * pad);
  Object.entries(series).forEach(([name, points], index) => {
    const kept = points.filter(([, v]) => v !== null && v !== undefined);
    if (kept.length) svg.append(line(kept.map(([t, v]) => [x(t), y(v)]), colors[name] || PALETTE[index % PALETTE.length]));
  });
  svg.append(label(4, 11, top.toLocaleString(undefined, { maximumFractionDigits: 1 })), label(4, height - 3, "0"));
}

function renderSeries(series) {
  chart(document.getElementById("throughput"), {
    finished: series.map((s) => [s.time, s.finished]),
    failed: series.map((s) => [s.time, s.failed]),
  }, { finished: COLORS.done, failed: COLORS.failed });
  chart(document.getElementById("latency"), { latency: series.map((s) => [s.time, s.latency_ms]) }, { latency: COLORS.running });
}

function renderDepths(samples) {
  const names = [...new Set(samples.flatMap((s) => Object.keys(s.depths)))].sort();
  const series = {};
  for (const name of names) series[name] = samples.map((s) => [s.time, s.depths[name] ?? null]);
  const colors = {};
  names.forEach((name, index) => { colors[name] = PALETTE[index % PALETTE.length]; });
  chart(document.getElementById("depths"), series, colors);
  document.getElementById("depths-legend").replaceChildren(...names.map((name) => {
    const item = el("span", {}, name);
    const swatch = el("i", { style: `background:${colors[name]}` });
    item.prepend(swatch);
    return item;
  }));
}

function renderFailures(failures) {
  const box = document.getElementById("failures");
  if (!failures.length) { box.replaceChildren(el("p", { class: "empty" }, "none")); return; }
  box.replaceChildren(...failures.slice(0, 20).map((failure) => {
    const item = el("div", { class: "failure" });
    const when = new Date(failure.time * 1000).toLocaleTimeString();
    item.append(el("div", {}, `${when} · ${failure.name} on ${failure.node}`), el("pre", {}, failure.chain));
    return item;
  }));
}

function renderJobs(jobs) {
  const select = document.getElementById("job");
  const wanted = ["", ...jobs.map((j) => j.job)];
  const have = [...select.options].map((o) => o.value);
  if (wanted.join("\n") !== have.join("\n")) {
    select.replaceChildren(el("option", { value: "" }, "(newest job)"), ...jobs.map((job) =>
      el("option", { value: job.job }, `${job.roots.join(", ") || "?"} · ${job.job.slice(0, 12)}`)));
    select.value = chosenJob;
  }
  const newest = jobs.length ? jobs[0].job : "";
  if (!chosenJob && newest && newest !== shownJob) {
    shownJob = newest;
    connect();
  }
}

function ensureGraph() {
  if (cy) return cy;
  if (window.cytoscapeDagre && window.cytoscape) window.cytoscape.use(window.cytoscapeDagre);
  cy = window.cytoscape({
    container: document.getElementById("graph"),
    wheelSensitivity: 0.3,
    maxZoom: 1.2,
    style: [
      { selector: "node", style: {
        "background-color": (n) => COLORS[n.data("status")] || COLORS.pending,
        label: "data(label)", "font-size": 9, "text-valign": "bottom", "text-margin-y": 2,
        width: "data(size)", height: "data(size)", "border-width": 0 } },
      { selector: "node.cached", style: { "border-width": 3, "border-color": "#1aa39a", "border-style": "dashed" } },
      { selector: "node.shared", style: { "border-width": 3, "border-color": "#8a4fd6" } },
      { selector: "node.remote", style: { "border-width": 5, "border-color": "#e08a1e", "border-style": "double" } },
      { selector: "edge", style: { width: 1, "line-color": "#aab2c0", "target-arrow-color": "#aab2c0",
        "target-arrow-shape": "triangle", "curve-style": "bezier", label: "data(label)", "font-size": 8 } },
    ],
  });
  window.girderGraph = cy;
  return cy;
}

function renderGraph(graph) {
  const box = document.getElementById("graph");
  const graphView = ensureGraph();
  if (box.dataset.job !== graph.job) { graphView.elements().remove(); box.dataset.job = graph.job; }
  let added = false;
  const seen = new Set();
  for (const node of graph.nodes) {
    seen.add(node.id);
    const classes = ["cached", "shared", "remote"].filter((c) => node[c]).join(" ");
    const text = graph.collapsed ? `${node.name} ×${node.count}` : `${node.name}${node.node ? " @" + node.node.split("-").slice(-1)[0] : ""}`;
    const data = { id: node.id, label: text, status: node.status, size: graph.collapsed ? 18 + Math.min(30, Math.sqrt(node.count) * 3) : 16 };
    const existing = graphView.getElementById(node.id);
    if (existing.nonempty()) { existing.data(data); existing.classes(classes); } else { graphView.add({ group: "nodes", data, classes }); added = true; }
  }
  graph.edges.forEach((edge) => {
    const id = `${edge.source}->${edge.target}`;
    seen.add(id);
    const existing = graphView.getElementById(id);
    const data = { id, source: edge.source, target: edge.target, label: edge.count ? String(edge.count) : "" };
    if (existing.nonempty()) existing.data("label", data.label); else { graphView.add({ group: "edges", data }); added = true; }
  });
  graphView.elements().filter((e) => !seen.has(e.id())).remove();
  box.dataset.count = String(graph.nodes.length);
  box.dataset.edges = String(graph.edges.length);
  box.dataset.collapsed = String(graph.collapsed);
  document.getElementById("graph-info").textContent =
    `${graph.nodes.length} ${graph.collapsed ? "functions (collapsed)" : "requests"}, ${graph.edges.length} edges`;
  if (added) scheduleLayout();
}

function scheduleLayout() {
  if (layoutPending) return;
  layoutPending = true;
  const wait = Math.max(0, 500 - (Date.now() - lastLayout));
  setTimeout(() => {
    layoutPending = false;
    lastLayout = Date.now();
    const name = window.cytoscapeDagre ? "dagre" : "breadthfirst";
    cy.layout({ name, rankDir: "TB", nodeSep: 12, rankSep: 40, animate: false, fit: true, padding: 12 }).run();
  }, wait);
}

document.getElementById("job").addEventListener("change", (event) => {
  chosenJob = event.target.value;
  connect();
});
connect();
