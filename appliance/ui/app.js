// bootd's live progress page. The data is /api/v1/machines (one row per machine, the model `bootd status`
// shows too) kept current by the server-sent events of /api/v1/events. Rows are updated in place, and every
// value from the server is written with textContent: a machine named <script> is shown as text.
"use strict";

const rows = new Map(); // mac -> {tr, cells, machine}
let clockOffset = 0; // server time - this browser's time, seconds
let lastEventId = 0;
let selected = null; // the mac whose timeline is open
let source = null;

const $ = (id) => document.getElementById(id);
const now = () => Date.now() / 1000 + clockOffset;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function setText(node, text) {
  const value = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  seconds = Math.max(0, seconds);
  if (seconds < 60) return seconds.toFixed(1) + " s";
  const m = Math.floor(seconds / 60), s = Math.floor(seconds % 60);
  if (m < 60) return `${m} min ${String(s).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
}

function clock(t) {
  return t ? new Date(t * 1000).toLocaleTimeString([], {hour12: false}) : "";
}

function finished(machine) {
  return machine.stage === "report" || machine.failure !== null && machine.failure !== undefined;
}

function elapsed(machine) {
  if (!machine.boot_started) return null;
  const end = finished(machine) ? machine.last_seen : now();
  return end - machine.boot_started;
}

function newRow(mac) {
  const tr = el("tr");
  const cells = {};
  for (const name of ["name", "mac", "ip", "arch", "group", "stage", "elapsed", "last"]) {
    cells[name] = el("td", name);
    tr.appendChild(cells[name]);
  }
  // the name and stage cells have a second line (a claim hint, a failure reason)
  cells.nameText = el("span");
  cells.claim = el("pre", "claim");
  cells.name.append(cells.nameText, cells.claim);
  cells.stageText = el("span");
  cells.failure = el("div", "failure");
  cells.stage.append(cells.stageText, cells.failure);
  cells.lastText = el("span");
  cells.lastDetail = el("div", "detail");
  cells.last.append(cells.lastText, cells.lastDetail);
  tr.dataset.mac = mac;
  tr.addEventListener("click", () => openTimeline(mac));
  $("machines").tBodies[0].appendChild(tr);
  const row = {tr, cells, machine: null};
  rows.set(mac, row);
  return row;
}

function showRow(machine) {
  const row = rows.get(machine.mac) || newRow(machine.mac);
  row.machine = machine;
  const c = row.cells;
  setText(c.nameText, machine.name || "unknown machine");
  c.nameText.className = machine.known ? "" : "unknown";
  setText(c.claim, machine.known || !machine.claim ? "" : "add under machines:\n" + machine.claim);
  c.claim.hidden = machine.known || !machine.claim;
  setText(c.mac, machine.mac);
  setText(c.ip, machine.ip || "");
  setText(c.arch, [machine.arch, machine.firmware].filter(Boolean).join(" / "));
  setText(c.group, [machine.group, machine.profile].filter(Boolean).join(" / "));
  const current = machine.stages && machine.stages.length ? machine.stages[machine.stages.length - 1] : null;
  setText(c.stageText, (machine.stage || (machine.boots ? "" : "not seen yet")) +
    (machine.power ? ` (power ${machine.power.state})` : "") +  // as its BMC last said (bootd power)
    (current && current.replica ? `@${current.replica}` : ""));  // the fleet view: the replica that served it
  setText(c.failure, machine.failure || "");
  c.failure.hidden = !machine.failure;
  setText(c.elapsed, duration(elapsed(machine)));
  const last = machine.last_event;
  setText(c.lastText, last ? `${clock(last.time)} ${last.stage}${last.ok ? "" : " (failed)"}` : "");
  setText(c.lastDetail, last ? last.detail : "");
  const state = machine.failure ? "failed" : machine.stage === "report" ? "done" : "";
  if (row.tr.className.replace(" selected", "") !== state) {
    row.tr.className = state + (selected === machine.mac ? " selected" : "");
  }
}

function showSummary() {
  const counts = new Map();
  let failed = 0;
  for (const {machine} of rows.values()) {
    if (!machine) continue;
    if (machine.failure) failed += 1;
    const stage = machine.stage || "not seen";
    counts.set(stage, (counts.get(stage) || 0) + 1);
  }
  const parts = [`${rows.size} machines`];
  for (const [stage, n] of counts) parts.push(`${n} ${stage}`);
  if (failed) parts.push(`${failed} failed`);
  setText($("summary"), parts.join(" · "));
  $("empty").hidden = rows.size > 0;
}

function tick() {
  for (const row of rows.values()) {
    if (row.machine && !finished(row.machine)) setText(row.cells.elapsed, duration(elapsed(row.machine)));
  }
}

async function loadList() {
  const response = await fetch("/api/v1/machines", {cache: "no-store"});
  if (!response.ok) throw new Error(`/api/v1/machines: ${response.status}`);
  const list = await response.json();
  clockOffset = list.now - Date.now() / 1000;
  lastEventId = list.last_event_id;
  showFleet(list.fleet);
  const present = new Set();
  for (const machine of list.machines) {
    present.add(machine.mac);
    showRow(machine);
  }
  for (const [mac, row] of rows) {
    if (!present.has(mac)) { row.tr.remove(); rows.delete(mac); }
  }
  showSummary();
}

// With the etcd store the list is the whole fleet's: say which replicas, and when it is stale (etcd lost).
let fleetStale = false;

function showFleet(fleet) {
  fleetStale = Boolean(fleet && fleet.stale);
  const node = $("fleet");
  node.hidden = !fleet;
  if (!fleet) return;
  const replicas = fleet.replicas.join(", ");
  setText(node, fleet.stale
    ? `fleet view stale since ${clock(fleet.stale_since)}: ${fleet.stale_reason}; showing what ${fleet.replica} has`
    : `fleet: ${replicas} (this is ${fleet.replica})`);
  node.className = fleet.stale ? "fleet stale" : "fleet";
}

function connect() {
  source = new EventSource(`/api/v1/events?since=${lastEventId}`);
  const status = $("connection");
  source.onopen = () => {
    status.textContent = "live"; status.className = "connection live";
    // the list said the fleet view was stale: it may have become current before this stream was open
    if (fleetStale) loadList().catch(() => {});
  };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "connection down"; };
  source.addEventListener("machine", (message) => {
    const data = JSON.parse(message.data);
    showRow(data.machine);
    showSummary();
    if (selected === data.machine.mac) refreshTimeline();
  });
  source.addEventListener("resync", () => { loadList().catch(() => {}); });
  // bootd stopping, or making room for another view: EventSource reconnects by itself and resumes
  source.addEventListener("closed", () => { status.textContent = "reconnecting…"; status.className = "connection down"; });
}

let timelineBusy = false; // one request at a time; an event meanwhile asks for one more after it
let timelineAgain = false;

function refreshTimeline() {
  if (timelineBusy) { timelineAgain = true; return; }
  timelineBusy = true;
  showTimeline(selected).catch(() => {}).finally(() => {
    timelineBusy = false;
    if (timelineAgain) { timelineAgain = false; refreshTimeline(); }
  });
}

function openTimeline(mac) {
  for (const row of rows.values()) row.tr.classList.toggle("selected", row.tr.dataset.mac === mac);
  selected = mac;
  refreshTimeline();
}

async function showTimeline(mac) {
  const response = await fetch(`/api/v1/machines/${encodeURIComponent(mac)}`, {cache: "no-store"});
  if (!response.ok || selected !== mac) return;
  const m = await response.json();
  $("timeline").hidden = false;
  setText($("timeline-title"), `${m.name || "unknown machine"} ${m.mac}` + (m.boots > 1 ? ` (boot ${m.boots})` : ""));
  $("timeline-failure").hidden = !m.failure;
  setText($("timeline-failure"), m.failure || "");
  $("timeline-claim").hidden = !m.claim;
  setText($("timeline-claim"), m.claim ? "add under machines: in bootd.yaml\n" + m.claim : "");
  const stages = $("timeline-stages").tBodies[0];
  stages.replaceChildren();
  const fleet = m.stages.some((s) => "replica" in s);  // the fleet view names the replica of each step
  $("timeline-replica").hidden = !fleet;
  for (const s of m.stages) {
    const tr = el("tr");
    tr.append(el("td", "", s.stage), el("td", "", clock(s.time)), el("td", "", duration(s.time - m.boot_started)),
              el("td", "", duration(s.duration)), el("td", s.ok ? "" : "bad", s.ok ? "ok" : "failed"),
              el("td", "", s.detail));
    if (fleet) tr.append(el("td", "replica", s.replica || ""));
    stages.appendChild(tr);
  }
  const events = $("timeline-events");
  events.replaceChildren();
  for (const e of (m.events || []).slice(-20).reverse()) {
    events.appendChild(el("li", e.ok ? "" : "bad",
                          `${clock(e.time)} ${e.stage}${e.replica ? "@" + e.replica : ""}: ${e.detail}`));
  }
}

async function start() {
  try {
    await loadList();
  } catch (error) {
    setText($("summary"), `cannot load the machines: ${error.message}`);
  }
  connect();
  setInterval(tick, 1000);
}

start();
