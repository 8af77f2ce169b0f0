// The dashboard page: log in once (token -> HttpOnly session cookie), then follow the
// controller's server-sent events; every value is put in the page as text, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let events = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace(".000Z", "Z").replace("T", " ") : "";
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "" : String(cell);
    tr.appendChild(td);
  }
  return tr;
}

function fill(table, rows) {
  const body = $(table).tBodies[0];
  body.replaceChildren(...rows);
}

function state(text, cls) {
  return el("span", text, "state " + cls);
}

function healthCell(board) {
  const cell = el("div");
  cell.appendChild(state(board.health, board.health));
  if (board.health_reason) cell.appendChild(el("span", board.health_reason, "reason"));
  return cell;
}

function labels(map) {
  const cell = el("div");
  for (const [key, value] of Object.entries(map || {}).sort()) cell.appendChild(el("span", key + "=" + value, "label"));
  return cell;
}

function queue(entries, length) {
  const list = el("ol", null, "queue");
  for (const entry of entries) {
    const item = el("li", entry.position + ". " + entry.client + " (" + entry.lease + ")");
    item.title = entry.why || "";
    list.appendChild(item);
  }
  if (length > entries.length) list.appendChild(el("li", "… and " + (length - entries.length) + " more"));
  return list;
}

function render(snapshot) {
  const c = snapshot.controller;
  const services = [row(["controller", c.endpoint, state(c.scheduler === "running" && c.store === "ok" ? "up" : "down",
      c.scheduler === "running" && c.store === "ok" ? "up" : "down"),
    "scheduler " + c.scheduler + ", store " + c.store + ", " + c.leases_active + " active / " + c.leases_pending +
      " pending leases, " + c.boards_online + " boards online, version " + c.version])];
  for (const r of snapshot.routers) {
    const s = r.up === null ? "unknown" : r.up ? "up" : "down";
    services.push(row(["router", r.endpoint, state(s, s), r.detail + (r.latency_ms !== null ? " (" + r.latency_ms + " ms)" : "")]));
  }
  fill("services", services);
  fill("boards", snapshot.boards.map((b) => {
    const tr = row([b.namespace + "/" + b.name, healthCell(b), state(b.online ? "online" : "offline", b.online ? "yes" : "no"),
      b.status + (b.enabled ? "" : " (disabled)"), labels(b.labels),
      b.holder ? b.holder + " (" + b.lease + ")" + (b.paused ? " paused" : "") : "",
      when(b.lease_end), queue(b.queue, b.queue_length)]);
    tr.dataset.board = b.name;
    return tr;
  }));
  fill("history", snapshot.history.map((e) => row([when(e.time), e.kind, e.name, e.action, e.actor, e.exporter, e.client,
    e.message || e.reason])));
  $("live").textContent = "live, changed " + when(Date.now() / 1000);
}

function showLogin(message) {
  if (events) { events.close(); events = null; }
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("who").textContent = "";
  $("live").textContent = "not logged in";
  $("login-error").textContent = message || "";
}

async function start() {
  const response = await fetch("/api/session", { credentials: "same-origin" });
  if (response.status === 401) { showLogin(""); return; }
  const session = await response.json();
  $("who").textContent = session.who;
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = session.who === "anonymous";
  follow();
}

function follow() {
  if (events) events.close();
  events = new EventSource("/api/events");
  events.addEventListener("snapshot", (message) => render(JSON.parse(message.data)));
  events.onerror = async () => {
    $("live").textContent = "reconnecting…";
    if (events.readyState === EventSource.CLOSED) {  // refused (logged out, expired) or the controller is gone
      events = null;
      setTimeout(() => start().catch(() => setTimeout(follow, 3000)), 3000);
    }
  };
}

async function login(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  $("token").value = "";  // the page keeps no copy of the token
  const response = await fetch("/login", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: token }),
  });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({ error: response.statusText }));
    showLogin(problem.error);
    return;
  }
  await start();
}

async function logout() {
  await fetch("/logout", { method: "POST", credentials: "same-origin" });
  showLogin("logged out");
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  start().catch(() => showLogin("the controller did not answer"));
});
