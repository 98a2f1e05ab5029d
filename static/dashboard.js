// nvllm's status dashboard. Plain script, no build step, no other site.
// The token lives in this tab's sessionStorage and goes out as a Bearer
// header; nothing is a cookie. Every value from the server reaches the page
// through textContent, never as HTML.
"use strict";

const POLL_MS = 1000;
const TOKEN = "nvllm.token";
const ROLE = "nvllm.role";
const USER = "nvllm.user";

const $ = (id) => document.getElementById(id);
let timer = null;
let polling = false;

function session() {
  return { token: sessionStorage.getItem(TOKEN), role: sessionStorage.getItem(ROLE), user: sessionStorage.getItem(USER) };
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit", cache: "no-store",
    });
  } catch (err) {
    return { ok: false, status: 0, error: "nvllm is unreachable" };
  }
  let payload = null;
  try { payload = await response.json(); } catch (err) { payload = null; }
  if (response.ok && payload && payload.status === "success") return { ok: true, status: response.status, data: payload.data };
  let error = (payload && payload.error) || ("HTTP " + response.status);
  const retry = response.headers.get("Retry-After");
  if (response.status === 429 && retry) error += " (try again in " + retry + " s)";
  return { ok: false, status: response.status, error };
}

// --- login ---

function showLogin(message) {
  stopPolling();
  sessionStorage.removeItem(TOKEN);
  sessionStorage.removeItem(ROLE);
  sessionStorage.removeItem(USER);
  document.body.classList.remove("is-admin", "sees-addresses");
  $("board").hidden = true;
  $("logout").hidden = true;
  $("whoami").textContent = "";
  $("updated").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("login-password").value = "";
  $("login-username").focus();
}

async function login(event) {
  event.preventDefault();
  const username = $("login-username").value.trim();
  const password = $("login-password").value;
  $("login-error").textContent = "";
  $("login-submit").disabled = true;
  const answer = await api("POST", "/api/user/login", { username, password });
  $("login-submit").disabled = false;
  if (!answer.ok) {
    $("login-error").textContent = answer.status === 401 ? "Wrong username or password." : answer.error;
    $("login-password").value = "";
    return;
  }
  sessionStorage.setItem(TOKEN, answer.data.token);
  sessionStorage.setItem(ROLE, answer.data.role);
  sessionStorage.setItem(USER, username);
  showBoard();
}

function showBoard() {
  const { role, user } = session();
  document.body.classList.toggle("is-admin", role === "admin");
  document.body.classList.toggle("sees-addresses", role === "admin" || role === "worker");
  $("login").hidden = true;
  $("board").hidden = false;
  $("logout").hidden = false;
  $("whoami").textContent = user + " (" + role + ")";
  startPolling();
}

// --- polling ---

function startPolling() {
  stopPolling();
  poll();
}

function stopPolling() {
  if (timer) clearTimeout(timer);
  timer = null;
}

async function poll() {
  if (polling) return;
  polling = true;
  const answer = await api("GET", "/api/node/stats");
  polling = false;
  if (!sessionStorage.getItem(TOKEN)) return;  // logged out meanwhile
  if (answer.ok) {
    render(answer.data);
    banner("");
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } else if (answer.status === 401) {
    showLogin("Your session ended; log in again.");
    return;
  } else {
    banner("Cannot read the fleet: " + answer.error + " (showing the last answer)");
  }
  stopPolling();
  timer = setTimeout(poll, POLL_MS);
}

function banner(text) {
  $("banner").textContent = text;
  $("banner").hidden = !text;
}

// --- rendering ---

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function num(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits === undefined ? 1 : digits);
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  return value < 1 ? Math.round(value * 1000) + " ms" : value.toFixed(2) + " s";
}

function kv(info) {
  if (info.kv_cache_usage !== undefined && info.kv_cache_usage !== null) return Math.round(info.kv_cache_usage * 100) + "%";
  return info.kv_cache <= 100 ? info.kv_cache + "%" : String(info.kv_cache);
}

function card(label, value) {
  const box = el("div", null, "card");
  box.append(el("div", label, "label"), el("div", value, "value"));
  return box;
}

function render(data) {
  const t = data.totals;
  const s = t.stats;
  $("totals").replaceChildren(
    card("nodes", t.nodes), card("alive", t.alive), card("routable", t.routable), card("draining", t.draining),
    card("running", t.running), card("waiting", t.waiting), card("in flight", t.inflight),
    card("requests/s", num(s.requests_per_s, 2)), card("errors/s", num(s.errors_per_s, 2)),
    card("tokens/s", num(s.tokens_per_s)), card("TTFT p50", seconds(s.ttft_p50)), card("TTFT p99", seconds(s.ttft_p99)),
    card("nvllm workers", t.instances),
  );
  renderSpark(data.series, data.window.bucket_seconds);
  renderNodes(data.nodes);
  renderModels(data.models);
  renderAliases(data.aliases || []);
}

function renderSpark(series, bucket) {
  const svg = $("spark");
  const ns = "http://www.w3.org/2000/svg";
  const peak = Math.max(0, ...series.map((b) => b.requests));
  const most = peak || 1;
  const line = (key, cls) => {
    const poly = document.createElementNS(ns, "polyline");
    const step = 300 / Math.max(1, series.length - 1);
    poly.setAttribute("points", series.map((b, i) => (i * step).toFixed(1) + "," + (38 - (b[key] / most) * 36).toFixed(1)).join(" "));
    if (cls) poly.setAttribute("class", cls);
    return poly;
  };
  svg.replaceChildren(line("requests"), line("errors", "errors"));
  $("spark-peak").textContent = (peak / bucket).toFixed(1) + "/s";
  svg.setAttribute("aria-label", "fleet requests per second, last minute; now " + ((series.length ? series[series.length - 1].requests : 0) / bucket).toFixed(1));
}

// Rows are keyed by node id and updated in place: a row (and its buttons)
// stays the same element from one poll to the next, so a click is never lost
// to a re-render.
function renderNodes(nodes) {
  const admin = session().role === "admin";
  const body = $("nodes").tBodies[0];
  const existing = new Map([...body.rows].map((tr) => [tr.dataset.nodeId, tr]));
  const rows = nodes.map((node) => {
    let tr = existing.get(node.node_id);
    if (!tr) {
      tr = el("tr");
      tr.dataset.nodeId = node.node_id;
    }
    fillNodeRow(tr, node, admin);
    return tr;
  });
  const same = rows.length === body.rows.length && rows.every((tr, i) => body.rows[i] === tr);
  if (!same) body.replaceChildren(...rows);
  $("no-nodes").hidden = nodes.length > 0;
}

function fillNodeRow(tr, node, admin) {
  const st = node.stats;
  const address = node.node_address === undefined ? "" : node.node_address + ":" + node.node_port;
  const problems = [];
  if (node.probe_failing) problems.push("polls failing");
  if (node.ejected_by) problems.push("ejected by " + node.ejected_by);
  const cells = [
    [node.node_id, "text"],
    [node.node_status, "text status", "badge " + node.node_status],
    [node.alive ? "yes" : "no", node.alive ? "yes" : "no"],
    [node.routable ? "yes" : "no", node.routable ? "yes" : "no"],
    [node.node_info.running], [node.node_info.waiting], [kv(node.node_info)], [node.inflight],
    [problems.length ? problems.join(", ") : "ok", problems.length ? "text no" : "text yes"],
    [seconds(st.ttft_p50)], [seconds(st.ttft_p99)], [num(st.tokens_per_s)], [num(st.requests_per_s, 2)],
    [num(st.errors_per_s, 2), st.errors_per_s > 0 ? "no" : ""],
    [(node.models.length ? node.models.join(", ") : "any")
      + (node.adapters && node.adapters.length ? "; LoRA: " + node.adapters.map((a) => a.id).join(", ") : ""), "models"],
    [address, "text addr"],
  ];
  tr.className = node.alive ? "" : "dead";
  cells.forEach(([text, cls, badge], i) => {
    let td = tr.cells[i];
    if (!td) td = tr.appendChild(el("td"));
    if (td.className !== (cls || "")) td.className = cls || "";
    const target = badge ? (td.firstElementChild || td.appendChild(el("span"))) : td;
    if (badge && target.className !== badge) target.className = badge;
    if (target.textContent !== String(text)) target.textContent = String(text);
  });
  let actions = tr.cells[cells.length];
  if (!actions) actions = tr.appendChild(el("td", null, "actions admin"));
  const wanted = admin ? [node.node_status === "draining" ? "undrain" : "drain", "delete"] : [];
  const have = [...actions.children].map((b) => b.dataset.action);
  if (have.join() !== wanted.join()) actions.replaceChildren(...wanted.map((a) => actionButton(a, node.node_id)));
}

function renderModels(models) {
  const rows = models.map((m) => {
    const tr = el("tr");
    tr.dataset.model = m.model;
    const st = m.stats;
    tr.append(
      el("td", m.model, "text"), el("td", m.nodes), el("td", m.routable, m.routable ? "" : "no"),
      el("td", num(st.requests_per_s, 2)), el("td", num(st.errors_per_s, 2)), el("td", num(st.tokens_per_s)),
      el("td", seconds(st.ttft_p50)), el("td", seconds(st.ttft_p99)),
    );
    return tr;
  });
  $("models").tBodies[0].replaceChildren(...rows);
}

function renderAliases(aliases) {
  const rows = aliases.map((a) => {
    const tr = el("tr");
    tr.dataset.alias = a.alias;
    tr.append(
      el("td", a.alias, "text"), el("td", a.model, "text"),
      el("td", a.listed ? "listed" : "hidden", a.listed ? "" : "warn"),
      el("td", a.routable, a.routable ? "" : "no"),
    );
    return tr;
  });
  $("aliases").tBodies[0].replaceChildren(...rows);
  $("aliases-section").hidden = aliases.length === 0;
}

// --- admin actions, each after a confirmation ---

const ACTIONS = {
  drain: {
    label: "Drain", ask: (id) => "Drain " + id + "? It gets no new requests and finishes what it has.",
    run: (id) => api("PUT", "/api/node/node/update/" + encodeURIComponent(id), { node_status: "draining" }),
  },
  undrain: {
    label: "Undrain", ask: (id) => "Put " + id + " back online?",
    run: (id) => api("PUT", "/api/node/node/update/" + encodeURIComponent(id), { node_status: "online" }),
  },
  delete: {
    label: "Delete", ask: (id) => "Delete " + id + "? Its agent registers it again at its next heartbeat, if it still runs.",
    run: (id) => api("DELETE", "/api/node/node/delete/" + encodeURIComponent(id)),
  },
};

function actionButton(action, nodeId) {
  const button = el("button", ACTIONS[action].label, action === "delete" ? "danger" : "");
  button.type = "button";
  button.dataset.action = action;
  button.dataset.nodeId = nodeId;
  return button;
}

function confirmThen(text) {
  return new Promise((resolve) => {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    dialog.returnValue = "";
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
  });
}

async function onAction(event) {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  const action = ACTIONS[button.dataset.action];
  const id = button.dataset.nodeId;
  if (!(await confirmThen(action.ask(id)))) return;
  const answer = await action.run(id);
  if (!answer.ok) {
    if (answer.status === 401) { showLogin("Your session ended; log in again."); return; }
    $("action-error").textContent = action.label + " " + id + ": " + answer.error;
    return;
  }
  $("action-error").textContent = "";
  startPolling();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => showLogin(""));
  $("nodes").addEventListener("click", onAction);
  if (session().token) showBoard();
  else showLogin("");
});
