// cadre's web console: three pages over the node's console API (/api/v1). It only draws what
// the API answers; the node does every fold and check.
"use strict";

window.cadreLoadedAt = Date.now();
const main = document.getElementById("main");
const statusLine = document.getElementById("status");
let stopPage = () => {};

function token() { return sessionStorage.getItem("cadre-token") || ""; }

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["authorization"] = "Bearer " + token();
  return h;
}

class ApiError extends Error {
  constructor(status, body) { super(body.error || ("HTTP " + status)); this.status = status; this.code = body.code; }
}

async function api(path, options) {
  const response = await fetch("/api/v1" + path, Object.assign({}, options, {
    headers: headers(options && options.headers),
  }));
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401) askForToken();
    throw new ApiError(response.status, body);
  }
  return body;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

function askForToken() {
  const form = document.getElementById("login");
  form.hidden = false;
  form.onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem("cadre-token", document.getElementById("token").value.trim());
    form.hidden = true;
    route();
  };
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showError(e) {
  main.replaceChildren(el("p", { class: "error" }, e.message));
}

function ms(micros) { return micros / 1000; }

function duration(msecs) {
  if (msecs === null || msecs === undefined) return "…";
  if (msecs < 1) return msecs.toFixed(2) + " ms";
  if (msecs < 1000) return msecs.toFixed(0) + " ms";
  return (msecs / 1000).toFixed(2) + " s";
}

// ---- The supervision tree, live --------------------------------------------------------

function key(node, path) { return (node || "") + "|" + path; }

function renderActor(a, node) {
  const li = el("li", {
    class: "actor", "data-node": node, "data-path": a.path, "data-status": a.status,
    "data-pid": a.pid === undefined ? "" : a.pid, "data-restarts": a.restarts,
  },
    el("div", { class: "row" },
      el("span", { class: "name" }, a.path.split("/").pop()),
      el("span", { class: "kind" }, a.kind + (a.strategy ? " " + a.strategy : "")),
      el("span", { class: "status " + a.status }, a.status),
      el("span", { class: "meta pid" }, a.pid === undefined ? "" : "pid " + a.pid),
      el("span", { class: "meta restarts" }, "restarts " + a.restarts),
      el("span", { class: "meta" }, a.placement ? "placed " + a.placement : ""),
    ));
  if (a.children && a.children.length) {
    li.append(el("ul", {}, a.children.map((c) => renderActor(c, node))));
  }
  return li;
}

function flash(li) {
  li.classList.add("changed");
  setTimeout(() => li.classList.remove("changed"), 50);
}

function applyChange(change) {
  if (change.kind === "node") return false;
  const li = document.querySelector(`li.actor[data-node="${CSS.escape(change.node || "")}"][data-path="${CSS.escape(change.path)}"]`);
  if (!li) return change.change !== "deleted";
  const status = { started: "running", restarting: "restarting", exited: "stopped",
    terminated: "stopped", escalated: "stopped", deleted: "stopped" }[change.change] || li.dataset.status;
  li.dataset.status = status;
  const badge = li.querySelector(":scope > .row > .status");
  badge.className = "status " + status;
  badge.textContent = status;
  const pid = change.change === "started" && change.pid !== undefined ? change.pid : (status === "running" ? li.dataset.pid : "");
  li.dataset.pid = pid;
  li.querySelector(":scope > .row > .pid").textContent = pid === "" ? "" : "pid " + pid;
  if (change.change === "started") {
    li.dataset.restarts = change.restarts;
    li.querySelector(":scope > .row > .restarts").textContent = "restarts " + change.restarts;
  }
  if (change.change === "deleted") li.remove();
  flash(li);
  return false;
}

async function treePage() {
  let alive = true;
  const controller = new AbortController();
  stopPage = () => { alive = false; controller.abort(); };
  const container = el("div", {});
  main.replaceChildren(el("h2", {}, "Supervision tree"), container);
  async function draw() {
    const { trees } = await api("/tree");
    if (!alive) return;
    container.replaceChildren(...trees.map((t) => el("section", { "data-node": t.node },
      el("div", { class: "node-title" }, t.node ? `node ${t.node} ` : "this node ",
        el("span", { class: "state " + t.state }, t.state), t.error ? el("span", { class: "error" }, " " + t.error) : null),
      el("ul", { class: "tree" }, [t.root, t.system].filter(Boolean).map((a) => renderActor(a, t.node))))));
  }
  await draw();
  // Live changes: one JSON object a line, until the page changes.
  while (alive) {
    try {
      const response = await fetch("/api/v1/tree/watch", { headers: headers(), signal: controller.signal });
      if (!response.ok) throw new Error("watch: HTTP " + response.status);
      statusLine.textContent = "live";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (!line.trim()) continue;
          const change = JSON.parse(line);
          if (change.error) continue;
          if (applyChange(change)) await draw();
        }
      }
    } catch (e) {
      if (!alive) return;
      statusLine.textContent = "reconnecting: " + e.message;
    }
    if (!alive) return;
    await new Promise((r) => setTimeout(r, 1000));
    await draw().catch(() => {});
  }
}

// ---- Conversations ----------------------------------------------------------------------

async function conversationsPage() {
  let alive = true;
  stopPage = () => { alive = false; };
  const { conversations } = await api("/conversations");
  if (!alive) return;
  main.replaceChildren(el("h2", {}, "Conversations"), el("table", {},
    el("tr", {}, el("th", {}, "conversation"), el("th", {}, "agent"), el("th", {}, "state"), el("th", {}, "events"), el("th", {}, "waiting on")),
    conversations.map((c) => el("tr", { "data-conversation": c.conversation_id },
      el("td", {}, el("a", { href: "#/conversations/" + encodeURIComponent(c.conversation_id) }, c.conversation_id)),
      el("td", {}, c.agent_id || ""),
      el("td", {}, el("span", { class: "state " + (c.exec_state || "") }, c.exec_state || "")),
      el("td", {}, c.last_seq),
      el("td", {}, c.waiting_tool ? `${c.waiting_tool} (call ${c.waiting_call_id})` : "")))));
}

function waterfall(exec) {
  const end = exec.end_micros || Math.max(Date.now() * 1000, ...exec.steps.map((s) => s.end_micros || s.start_micros));
  const span = Math.max(end - exec.start_micros, 1);
  const rows = exec.steps.map((s) => {
    const stop = s.end_micros || end;
    const left = ((s.start_micros - exec.start_micros) / span) * 100;
    const width = Math.max(((stop - s.start_micros) / span) * 100, 0.3);
    const label = s.kind === "model" ? `model ${s.name}` : s.kind === "tool" ? `tool ${s.name}` : `approval ${s.name}`;
    return el("div", {
      class: "step" + (s.failed ? " failed" : "") + (s.end_micros ? "" : " open"),
      "data-kind": s.kind, "data-name": s.name, "data-call": s.call_id, title: s.detail,
    },
      el("span", { class: "label" }, label, el("span", { class: "meta" }, " " + (s.call_id || ""))),
      el("span", { class: "lane" }, el("span", { class: "bar", style: `left:${left}%;width:${width}%` })),
      el("span", { class: "dur" }, s.end_micros ? duration(ms(s.end_micros - s.start_micros)) : "waiting"));
  });
  return el("div", { class: "exec", "data-exec": exec.exec_id },
    el("h3", {}, `exec ${exec.exec_id} · agent ${exec.agent_id} · `,
      el("span", { class: "state " + exec.state }, exec.state),
      exec.end_micros ? ` · ${duration(ms(exec.end_micros - exec.start_micros))}` : ""),
    el("div", { class: "waterfall" }, rows.length ? rows : el("span", { class: "meta" }, "no model or tool calls")));
}

async function conversationPage(id) {
  let alive = true;
  stopPage = () => { alive = false; };
  let shown = "";
  async function draw() {
    const answer = await api("/conversations/" + encodeURIComponent(id));
    if (!alive) return;
    // Redrawn only when something changed (or a running exec's bars grow), so a button is not
    // replaced under the pointer.
    const text = JSON.stringify(answer);
    if (text === shown && !answer.execs.some((x) => x.state === "running")) return;
    shown = text;
    const { conversation: c, events, execs } = answer;
    const approval = c.exec_state === "waiting_approval" ? el("div", { class: "approval-box" },
      el("p", {}, `The exec waits on call ${c.waiting_call_id} of ${c.waiting_tool}.`),
      el("button", { id: "approve", class: "primary", onclick: () => decide(true) }, "Approve"), " ",
      el("button", { id: "decline", class: "danger", onclick: () => decide(false) }, "Decline")) : null;
    async function decide(approved) {
      try { await post(`/conversations/${encodeURIComponent(id)}/approve`, { approved, call_id: c.waiting_call_id }); await draw(); }
      catch (e) { statusLine.textContent = e.message; }
    }
    async function forkAt(seq) {
      try {
        const forked = await post(`/conversations/${encodeURIComponent(id)}/fork`, { at_seq: seq });
        location.hash = "#/conversations/" + encodeURIComponent(forked.conversation_id);
      } catch (e) { statusLine.textContent = e.message; }
    }
    main.replaceChildren(...[
      el("h2", {}, "Conversation ", el("code", {}, id), " ", el("span", { class: "state " + (c.exec_state || "") }, c.exec_state || "")),
      c.forked_from ? el("p", { class: "meta" }, `forked from ${c.forked_from} at seq ${c.forked_at_seq}`) : null,
      approval,
      el("section", { id: "timeline" }, execs.slice().reverse().map(waterfall)),
      el("h3", {}, "Events"),
      el("table", { id: "events" },
        el("tr", {}, el("th", {}, "seq"), el("th", {}, "time"), el("th", {}, "type"), el("th", {}, "detail"), el("th", {}, "")),
        events.map((e) => el("tr", { "data-seq": e.seq },
          el("td", {}, e.seq), el("td", { class: "mono" }, e.time.slice(11, 23)), el("td", {}, e.type),
          el("td", { class: "mono" }, e.detail),
          el("td", {}, el("button", { class: "fork", "data-seq": e.seq, onclick: () => forkAt(e.seq) }, "Fork here"))))),
    ].filter(Boolean));
  }
  await draw();
  while (alive) {
    await new Promise((r) => setTimeout(r, 1000));
    if (alive) await draw().catch((e) => { statusLine.textContent = e.message; });
  }
}

// ---- Sandboxes and placement ------------------------------------------------------------

async function sandboxesPage() {
  let alive = true;
  stopPage = () => { alive = false; };
  let shown = "";
  async function draw() {
    const s = await api("/sandboxes");
    if (!alive) return;
    const text = JSON.stringify(s);
    if (text === shown) return;
    shown = text;
    main.replaceChildren(
      el("h2", {}, "Sandboxes"),
      el("p", {}, `provider ${s.provider} (${s.isolated ? "isolated" : "NOT isolated"}), warm pool min ${s.min} max ${s.max}`),
      el("table", { id: "sandboxes" },
        el("tr", {}, el("th", {}, "sandbox"), el("th", {}, "state"), el("th", {}, "tenant"), el("th", {}, "pid"), el("th", {}, "slots"), el("th", {}, "actors")),
        s.sandboxes.map((x) => el("tr", { "data-sandbox": x.id },
          el("td", { class: "mono" }, x.id), el("td", {}, el("span", { class: "state " + x.state }, x.state)),
          el("td", {}, x.tenant || "-"), el("td", {}, x.pid || "-"),
          el("td", {}, x.slots ? `${x.actors.length}/${x.slots}` : "-"),
          el("td", { class: "mono" }, x.actors.join(", "))))),
      el("h2", {}, "Placement"),
      el("table", { id: "placement" },
        el("tr", {}, el("th", {}, "actor"), el("th", {}, "tenant"), el("th", {}, "isolation"), el("th", {}, "state"), el("th", {}, "sandbox")),
        s.actors.map((a) => el("tr", { "data-actor": a.id },
          el("td", { class: "mono" }, a.id), el("td", {}, a.tenant), el("td", {}, a.isolation),
          el("td", {}, el("span", { class: "state " + a.state }, a.state)), el("td", { class: "mono" }, a.sandbox || "-")))));
  }
  await draw();
  while (alive) {
    await new Promise((r) => setTimeout(r, 2000));
    if (alive) await draw().catch((e) => { statusLine.textContent = e.message; });
  }
}

// ---- Routing ----------------------------------------------------------------------------

function route() {
  stopPage();
  stopPage = () => {};
  statusLine.textContent = "";
  const hash = location.hash || "#/tree";
  const [, page, id] = hash.split("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  const run = page === "conversations" && id ? conversationPage(decodeURIComponent(id))
    : page === "conversations" ? conversationsPage()
    : page === "sandboxes" ? sandboxesPage()
    : treePage();
  run.catch(showError);
}

window.addEventListener("hashchange", route);
route();
