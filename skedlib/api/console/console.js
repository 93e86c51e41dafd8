// The skedlib web console: a page over the REST API (/v1), served by `sked serve` at /.
// No framework and no CDN: everything is in this file. Data from the store is only ever
// put into the page as text (textContent), never as HTML.
"use strict";

const API = "/v1";
const TOKEN_KEY = "skedlib.console.token";
let current = "hosts";
let selectedTask = "";
let refreshTimer = 0;
let liveAbort = null;
// "" : this server's own store (the default, where the page may change things);
// "*": every datacenter the server reads; else one datacenter's name. Read-only beyond "".
let scope = "";
let pollTimer = 0;
const DC_POLL_MS = 5000;  // the change stream follows only this server's store

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method: options.method || "GET", headers, cache: "no-store",
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    signal: options.signal,
  });
  if (response.status === 401) { signOut("The token was refused; sign in again."); }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.message) || response.statusText);
  }
  return body;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell ?? "";
    tr.appendChild(td);
  }
  return tr;
}

function bar(used, total) {
  const wrap = el("div", undefined, "bar");
  if (total === null || total === undefined) { wrap.appendChild(el("em", "-")); return wrap; }
  const fill = el("span");
  fill.style.width = `${total ? Math.min(100, (100 * used) / total) : 0}%`;
  wrap.appendChild(fill);
  wrap.appendChild(el("em", `${used}/${total}`));
  wrap.title = `${used} of ${total} allocated`;
  return wrap;
}

function flag(ok, yes, no) { return el("span", ok ? yes : no, ok ? "ok" : "bad"); }

function showError(message) { $("error").textContent = message || ""; }

function fill(section, rows) {
  const tbody = document.querySelector(`#${section} tbody`);
  tbody.replaceChildren(...rows);
}

// -- datacenters ----------------------------------------------------------------------------
// The rows of /all-datacenters/<what> in the chosen scope; the banner lists the datacenters
// that did not answer (each with why), or hides when all did.
// A reply for a scope the page has left since it asked (a slow datacenter can hold it for
// the server's timeout): dropped, so it neither fills the tables nor shows the banner.
class Superseded extends Error {}

async function across(what, query = "") {
  const asked = scope;
  const params = new URLSearchParams(query);
  if (asked !== "*") params.set("datacenter", asked);
  const found = await api(`/all-datacenters/${what}?${params}`);
  if (scope !== asked) throw new Superseded(`a reply for ${asked}`);
  const gone = found.unreachable || [];
  $("dc-unreachable").replaceChildren(...gone.map((u) => el("li",
    `${u.datacenter}: ${u.error}`)));
  $("dc-banner").hidden = gone.length === 0;
  return found.items;
}

function showScope() {
  for (const th of document.querySelectorAll("th.dc")) th.hidden = !scope;
  if (!scope) $("dc-banner").hidden = true;
  clearInterval(pollTimer);
  if (scope) pollTimer = setInterval(() => { if (current !== "jobs") refresh(); }, DC_POLL_MS);
}

async function loadDatacenters() {
  let names = [];
  try { names = (await api("/datacenters")).items; } catch (e) { report(e); }
  const select = $("datacenter");
  select.replaceChildren(el("option", "this server's store"), el("option", "all datacenters"),
    ...names.map((n) => el("option", n)));
  select.options[0].value = "";
  select.options[1].value = "*";
  for (let i = 0; i < names.length; i++) select.options[i + 2].value = names[i];
  // one datacenter is this server's own store: nothing to choose
  $("dc-choice").hidden = names.length < 2;
  if (names.length < 2 || (scope !== "*" && scope && !names.includes(scope))) scope = "";
  select.value = scope;
  showScope();
}

// A row marked with its datacenter when the page shows more than this server's store.
function dcRow(item, cells) { return row(scope ? [item.datacenter, ...cells] : cells); }

// -- tabs ---------------------------------------------------------------------------------
async function loadHosts() {
  const hosts = scope ? await across("hosts") : (await api("/hosts")).items;
  fill("hosts", hosts.map((h) => {
    const button = el("button", h.draining ? "Undrain" : "Drain");
    button.type = "button";
    button.hidden = !!scope;  // writes go to this server's store only
    button.addEventListener("click", () => act(`/hosts/${encodeURIComponent(h.name)}/drain`,
      { method: "PUT", body: { draining: !h.draining } }));
    const tr = dcRow(h, [h.name,
      flag(h.live, h.draining ? "live, draining" : "live", "not live"),
      bar(h.memory_allocated, h.memory_total), bar(h.cpu_allocated, h.cpu_total), h.tasks,
      Object.entries(h.attributes).map(([k, v]) => `${k}=${v}`).join(", "), button]);
    tr.dataset.name = h.name;
    return tr;
  }));
}

async function loadServices() {
  const services = scope ? await across("services") : (await api("/services")).items;
  fill("services", services.map((s) => {
    const controls = el("span");
    controls.hidden = !!scope;  // writes go to this server's store only
    for (const [label, delta] of [["−", -1], ["+", 1]]) {
      const b = el("button", label);
      b.type = "button";
      b.title = delta > 0 ? "scale up by one" : "scale down by one";
      b.addEventListener("click", () => act(`/services/${encodeURIComponent(s.name)}/scale`,
        { method: "PUT", body: { desired: Math.max(0, s.desired + delta) } }));
      controls.appendChild(b);
    }
    const healthy = s.healthy === null ? "-" : s.healthy;
    const tr = dcRow(s, [s.name, `${s.task_definition}:${s.version}`, s.scheduler, s.desired,
      s.placed === null ? "-" : s.placed,
      el("span", healthy, s.healthy === s.desired ? "ok" : "warn"), s.status, controls]);
    tr.dataset.name = s.name;
    return tr;
  }));
}

async function loadTasks() {
  const filter = $("task-filter").value.trim().toLowerCase();
  const all = scope ? await across("tasks", "limit=10000")
    : (await api("/tasks?limit=10000")).items;
  const tasks = all.filter((t) => !filter ||
    [t.id, t.host, t.service, t.state, t.datacenter]
      .some((v) => String(v ?? "").toLowerCase().includes(filter)));
  fill("tasks", tasks.map((t) => {
    const tr = dcRow(t, [t.id, t.host || "(unassigned)", t.service, t.version,
      flag(t.healthy, "yes", "no"), t.state, t.message]);
    if (scope) return tr;  // a task's details come from this server's store only
    tr.className = "clickable" + (t.id === selectedTask ? " selected" : "");
    tr.dataset.id = t.id;
    tr.addEventListener("click", () => { selectedTask = t.id; loadTasks().catch(report); });
    return tr;
  }));
  $("task-detail").hidden = !!scope || !selectedTask;
  if (selectedTask && !scope) await loadTaskDetail(selectedTask);
}

async function loadTaskDetail(id) {
  $("task-detail").hidden = false;
  $("task-detail-title").textContent = id;
  let detail;
  try {
    detail = await api(`/tasks/${encodeURIComponent(id)}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      $("task-record").textContent = "this task is no longer issued";
      $("task-output").textContent = "";
      $("task-events").replaceChildren();
      return;
    }
    throw e;
  }
  loadTaskOutput(id).catch(report);
  $("task-record").textContent = JSON.stringify(
    { task: detail.task, health: detail.health }, null, 2);
  const events = $("task-events");
  try {
    const found = await api(`/events?kind=task&name=${encodeURIComponent(id)}`);
    const items = found.events || [];
    events.replaceChildren(...(items.length ? items.map((e) => el("li",
      `${new Date(e.time * 1000).toLocaleTimeString()} ${e.reason}` +
      `${e.message ? ": " + e.message : ""}${e.source ? " (" + e.source + ")" : ""}`))
      : [el("li", "no events yet")]));
  } catch (e) {
    events.replaceChildren(el("li", e instanceof ApiError && e.status === 404
      ? "this server keeps no events" : `events: ${e.message}`));
  }
}

const OUTPUT_SHOWN = 16384;  // the last bytes of a task's output the page shows

async function loadTaskOutput(id) {
  const out = $("task-output");
  const response = await fetch(`${API}/tasks/${encodeURIComponent(id)}/logs`, {
    headers: { Authorization: `Bearer ${token()}` }, cache: "no-store",
  });
  if (!response.ok) {
    const body = await response.json().catch(() => null);
    out.textContent = `(no output: ${(body && body.message) || response.statusText})`;
    return;
  }
  const text = await response.text();
  out.textContent = text.length > OUTPUT_SHOWN
    ? "…" + text.slice(text.length - OUTPUT_SHOWN) : (text || "(no output yet)");
}

async function loadJobs() {
  const page = await api("/jobs?limit=200");
  const jobs = page.items.slice().reverse();  // newest first
  const queued = jobs.filter((j) => j.status === "queued").length;
  const running = jobs.filter((j) => j.status === "running").length;
  $("job-queue").textContent = `${queued} queued, ${running} running` +
    (page.next_token ? " (first 200 jobs)" : "");
  fill("jobs", jobs.map((j) => row([j.id, el("span", j.status,
    j.status === "complete" ? "ok" : j.status === "failed" ? "bad" : ""),
    [j.command, ...(j.args || [])].join(" "), j.node, j.attempts, j.reason])));
}

const LOADERS = { hosts: loadHosts, services: loadServices, tasks: loadTasks, jobs: loadJobs };

function report(e) {
  if (e instanceof ApiError && e.status === 401) return;
  if (e instanceof Superseded) return;
  showError(e.message || String(e));
}

async function refresh() {
  try {
    await LOADERS[current]();
    showError("");
  } catch (e) { report(e); }
}

function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 250);  // many changes in a burst: one read
}

async function act(path, options) {
  try {
    await api(path, options);
    showError("");
    await refresh();
  } catch (e) {
    report(e);
    if (e instanceof ApiError && e.status === 403) {
      showError(`refused: ${e.message} (a read-only token cannot change anything)`);
    }
  }
}

function show(tab) {
  current = tab;
  for (const b of document.querySelectorAll("#tabs button")) {
    b.classList.toggle("active", b.dataset.tab === tab);
  }
  for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== tab;
  refresh();
}

// -- live updates: the change stream, read with fetch so the token goes in a header ------
async function follow() {
  while (token()) {
    liveAbort = new AbortController();
    try {
      const response = await fetch(`${API}/changes?timeout=300`, {
        headers: { Authorization: `Bearer ${token()}` }, signal: liveAbort.signal,
        cache: "no-store",
      });
      if (!response.ok) throw new Error(`change stream: ${response.status}`);
      setLive(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (/^event: change$/m.test(block)) refreshSoon();
        }
      }
    } catch (e) {
      if (e.name === "AbortError") return;
    }
    setLive(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

function setLive(on) {
  const live = $("live");
  live.textContent = on ? "live" : "offline";
  live.className = `live ${on ? "on" : "off"}`;
}

// -- signing in and out -------------------------------------------------------------------
function signedIn() {
  $("login").hidden = true;
  $("tabs").hidden = false;
  $("logout").hidden = false;
  loadDatacenters().finally(() => show(current));
  follow();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (liveAbort) liveAbort.abort();
  setLive(false);
  scope = "";
  showScope();
  $("dc-choice").hidden = true;
  $("tabs").hidden = true;
  $("logout").hidden = true;
  for (const s of document.querySelectorAll("section.tab")) s.hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    try {
      await api("/services");
      $("login-error").textContent = "";
      signedIn();
    } catch (e) {
      signOut(e instanceof ApiError && e.status === 401
        ? "That token was refused." : `Cannot reach the API: ${e.message}`);
    }
  });
  $("logout").addEventListener("click", () => signOut(""));
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => show(b.dataset.tab));
  }
  $("task-filter").addEventListener("input", () => loadTasks().catch(report));
  $("datacenter").addEventListener("change", () => {
    scope = $("datacenter").value;
    showScope();
    refresh();
  });
  if (token()) signedIn();
});
