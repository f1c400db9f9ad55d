// mirrorkit console: renders the cluster view the server streams (/api/v1/events) and sends
// the verbs (/api/v1/modules/{module}/{verb}). No framework, no inline script (the page's CSP
// forbids it), and every text from the server goes in with textContent, never as HTML.
"use strict";

const VERBS = ["start", "stop", "restart", "swap", "prim", "second", "forcestop"];
const PRIMARY_STATES = ["PROMOTING", "ALONE", "PRIM", "RESTARTING"];
const LOG_LINES = 12;
const LOG_REFRESH_MS = 5000;

let session = null;          // {csrf, node, peer, cluster}
let view = null;             // the last ClusterView
let receivedAt = 0;          // when it came (ms, this browser's clock)
const pending = new Map();   // "module|node|verb" -> true while a verb runs
const errors = new Map();    // module -> {text, node, verb}: the last refusal, until dismissed
const logs = new Map();      // "module|node" -> entries
const lastProgress = new Map(); // "module|node" -> {done, at}: for the rate
const rates = new Map();     // "module|node" -> bytes per second
let logsFetchedAt = 0;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return e;
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return s + " s";
  const m = Math.floor(s / 60);
  if (m < 60) return m + " min " + (s % 60) + " s";
  const h = Math.floor(m / 60);
  if (h < 48) return h + " h " + (m % 60) + " min";
  return Math.floor(h / 24) + " days " + (h % 24) + " h";
}

function mib(bytes) {
  return (bytes / 1048576).toFixed(1) + " MiB";
}

function micros(us) {
  if (us < 1000) return us + " µs";
  if (us < 1000000) return (us / 1000).toFixed(2) + " ms";
  return (us / 1000000).toFixed(1) + " s";
}

function clock(ms) {
  const d = new Date(ms);
  return d.toLocaleDateString(undefined, { month: "2-digit", day: "2-digit" }) + " " +
    d.toLocaleTimeString(undefined, { hour12: false });
}

async function api(method, path, body) {
  const headers = {};
  if (method !== "GET") {
    headers["X-CSRF-Token"] = session ? session.csrf : "";
    headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) {
    window.location.assign("/login");
    throw new Error("logged out");
  }
  let data = null;
  try { data = await resp.json(); } catch (_) { data = { error: "HTTP " + resp.status }; }
  return { status: resp.status, data };
}

function toast(text, bad) {
  const t = el("div", { class: "toast" + (bad ? " bad" : ""), role: "status", text });
  document.getElementById("toasts").append(t);
  setTimeout(() => t.remove(), bad ? 15000 : 6000);
}

// What each node says of a module: its own status when reachable, else what the other node
// last heard from it.
function moduleOn(v, nodeName, moduleName) {
  const nv = v.nodes.find((n) => n.node === nodeName);
  if (nv && nv.status) {
    const m = nv.status.modules.find((x) => x.name === moduleName);
    return m ? { own: true, m, nv } : null;
  }
  for (const other of v.nodes) {
    if (other.node === nodeName || !other.status) continue;
    const m = other.status.modules.find((x) => x.name === moduleName);
    if (m) {
      return {
        own: false, nv, via: other.node,
        m: { name: moduleName, state: m.peer_state, reason: m.peer_reason, problems: [], checkers: [] },
      };
    }
  }
  return { own: false, nv, m: { name: moduleName, state: null, reason: null, problems: [], checkers: [] } };
}

function colourOf(state) {
  switch (state) {
    case "PRIM": case "SECOND": return "green";
    case "ALONE": return "orange";
    case "STOP": case "WAIT": return "red";
    case null: case undefined: return "unknown";
    default: return "grey";
  }
}

function otherNode(node) {
  return view.nodes.map((n) => n.node).find((n) => n !== node) || "the other node";
}

// The confirmation a verb needs, or null when it is harmless.
function danger(module, node, verb, info) {
  const state = info && info.m ? info.m.state : null;
  const other = otherNode(node);
  const primary = PRIMARY_STATES.includes(state);
  const split = info && info.m && info.m.split_brain;
  switch (verb) {
    case "prim": {
      let text = "Make " + node + " the primary of " + module + " on its own data, whatever its age.";
      if (state === "WAIT" || split) {
        text = (split ? "SPLIT BRAIN: the data of both nodes diverged.\n" : node + " is WAIT: its data may be older than " + other + "'s.\n") +
          text + "\n" + node + "'s data becomes the reference: what only " + other +
          " holds is set aside (kept in its split-brain folder, never deleted) when it resyncs from " + node + ".";
      } else {
        text += "\nIf " + other + " holds newer data, its divergent files are set aside when it resyncs.";
      }
      return { title: "Force " + node + " primary for " + module + "?", text, ok: "Force primary on " + node };
    }
    case "forcestop":
      return {
        title: "Force-stop " + module + " on " + node + "?",
        text: "Stops " + module + " on " + node + " at once, WITHOUT its stop scripts: its processes are killed, its virtual IP dropped, its mount detached." +
          (primary ? "\n" + node + " is the primary: the application is cut off mid-work and clients lose service until another node takes over." : "") +
          "\nUse it when a normal stop hangs.",
        ok: "Force-stop on " + node,
      };
    case "stop":
      if (!primary) return null;
      return {
        title: "Stop the primary of " + module + "?",
        text: node + " is the primary of " + module + ". Stopping it hands the application over to " + other +
          " if " + other + " is in sync (SECOND); otherwise the application stops and clients lose service.",
        ok: "Stop " + module + " on " + node,
      };
    case "second":
      if (!primary) return null;
      return {
        title: "Make " + node + " secondary for " + module + "?",
        text: node + " is the primary: the application stops on " + node + ". It moves to " + other + " only if " + other + " can take over.",
        ok: "Make " + node + " secondary",
      };
    case "swap":
      return {
        title: "Swap the primary of " + module + "?",
        text: "The primary role of " + module + " moves to the other node: the application stops on the current primary, every write reaches the other node, and the application starts there. Clients lose service for a few seconds.",
        ok: "Swap " + module,
      };
    default:
      return null;
  }
}

function confirmVerb(d) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = d.title;
  document.getElementById("confirm-text").textContent = d.text;
  document.getElementById("confirm-ok").textContent = d.ok;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

async function runVerb(module, node, verb) {
  const info = view ? moduleOn(view, node, module) : null;
  const d = danger(module, node, verb, info);
  if (d && !(await confirmVerb(d))) return;
  const key = module + "|" + node + "|" + verb;
  pending.set(key, true);
  errors.delete(module);
  render();
  try {
    const r = await api("POST", "/api/v1/modules/" + encodeURIComponent(module) + "/" + verb, { node });
    if (r.status === 200) {
      toast(verb + " " + module + " on " + node + ": done, " + r.data.state + " on " + node, false);
    } else {
      const text = r.data && r.data.error ? r.data.error : "HTTP " + r.status;
      errors.set(module, { text, node, verb });
      toast(verb + " " + module + " on " + node + " refused: " + text, true);
    }
  } catch (e) {
    errors.set(module, { text: String(e), node, verb });
  } finally {
    pending.delete(key);
    render();
    fetchLogs(true);
  }
}

function moduleNames(v) {
  const names = [];
  for (const n of v.nodes) {
    if (!n.status) continue;
    for (const m of n.status.modules) if (!names.includes(m.name)) names.push(m.name);
  }
  return names;
}

function replication(module, node, m) {
  const parts = [];
  if (m.progress) {
    const p = m.progress;
    const pct = p.total_bytes > 0 ? Math.min(100, Math.floor((100 * p.done_bytes) / p.total_bytes)) : 0;
    // The engine's own rate and ETA when this node runs the resync; else one measured here.
    const r = m.replication;
    const rate = r && r.sync_rate > 0 ? r.sync_rate : rates.get(module + "|" + node);
    let figures = "resync " + pct + "%: " + mib(p.done_bytes) + " of " + mib(p.total_bytes);
    if (rate && rate > 0) {
      const left = r && r.sync_rate > 0 && r.sync_eta_secs !== null && r.sync_eta_secs !== undefined
        ? 1000 * r.sync_eta_secs
        : (1000 * (p.total_bytes - p.done_bytes)) / rate;
      figures += ", " + mib(rate) + "/s, about " + duration(left) + " left";
    }
    const bar = el("div", {});
    bar.style.width = pct + "%"; // through the CSSOM: the CSP forbids style attributes
    parts.push(el("div", { class: "progress", role: "progressbar", "aria-valuenow": String(pct), "aria-valuemin": "0", "aria-valuemax": "100" }, bar));
    parts.push(el("div", { class: "figures", text: figures }));
  }
  if (m.mirror) {
    parts.push(el("div", { class: "figures", text: "replication: " + m.mirror }));
    const r = m.replication;
    if (r && r.role === "primary") {
      const f = [];
      if (m.write_rate !== null && m.write_rate !== undefined) f.push(mib(m.write_rate) + "/s written");
      if (r.ack_latency_recent_us > 0) f.push("latency " + micros(r.ack_latency_recent_us));
      f.push(r.ops_sent + " operations sent");
      parts.push(el("div", { class: "figures", "data-figures": module + "|" + node, text: f.join(", ") }));
    }
  } else if (m.state === "SECOND") {
    parts.push(el("div", { class: "figures", text: m.progress ? "receiving the resync" : "secondary: receiving every write" }));
  }
  if (m.peer_in_sync === false && PRIMARY_STATES.includes(m.state)) {
    parts.push(el("div", { class: "figures", text: "peer NOT in sync: changes are recorded for its resync" }));
  }
  return parts.length ? el("div", { class: "repl" }, parts) : null;
}

function checkers(m) {
  if (!m.checkers || m.checkers.length === 0) return null;
  return el("table", { class: "checkers" },
    el("tr", {}, el("th", { text: "checker" }), el("th", { text: "state" }), el("th", { text: "last result" })),
    m.checkers.map((c) => el("tr", {},
      el("td", { text: c.name + " (" + c.kind + ")" }),
      el("td", { class: c.state, text: c.state + (c.restarts_in_window ? ", " + c.restarts_in_window + " restarts" : "") }),
      el("td", { text: c.last_result }))));
}

function logBox(module, node, own) {
  if (!own) return el("div", { class: "log", text: node + " cannot be reached: its event log cannot be read" });
  const entries = logs.get(module + "|" + node);
  if (!entries) return el("div", { class: "log", text: "loading the event log…" });
  if (entries.error) return el("div", { class: "log", text: "event log unavailable: " + entries.error });
  if (entries.length === 0) return el("div", { class: "log", text: "no events yet" });
  const box = el("div", { class: "log", "data-log": module + "|" + node },
    entries.map((e) => el("div", { class: "entry " + e.level },
      el("span", { class: "time", text: clock(e.time_ms) + " " }), e.kind + " " + e.text)));
  return box;
}

function cell(module, node, info) {
  const m = info.m;
  const state = m.state;
  const primary = PRIMARY_STATES.includes(state);
  const classes = ["cell"];
  if (primary) classes.push("is-primary");
  if (state === "ALONE") classes.push("alone");
  if (!info.own) classes.push("unreachable");
  const local = view.local === node;
  const badge = el("span", {
    class: "badge " + colourOf(state) + (info.own ? "" : " stale"),
    id: "state-" + module + "-" + node, "data-module": module, "data-node": node, "data-state": state || "",
    text: state || (info.own ? "INVALID" : "UNREACHABLE"),
  });
  const head = el("div", { class: "cell-head" },
    el("span", { class: "node-name", text: node }),
    local ? el("span", { class: "tag", text: "this console" }) : null,
    primary ? el("span", { class: "tag primary" + (state === "ALONE" ? " alone" : ""), text: "PRIMARY" }) : null);
  let reason;
  if (info.own) {
    reason = el("div", { class: "reason", id: "reason-" + module + "-" + node, text: m.reason || "" });
  } else if (info.via && state) {
    reason = el("div", { class: "reason hearsay", id: "reason-" + module + "-" + node,
      text: "Unreachable. As " + info.via + " last heard: " + (m.reason || "") });
  } else {
    reason = el("div", { class: "reason hearsay", id: "reason-" + module + "-" + node,
      text: "Unreachable, and the other node does not hear it: its state is unknown." });
  }
  const since = info.own ? el("span", { class: "since", "data-since": String(receivedAt - m.since_ms_ago) }) : null;
  const problems = m.problems && m.problems.length ? el("div", { class: "problems", text: "problem on this node: " + m.problems.join("; ") }) : null;
  const split = m.split_brain ? el("div", { class: "problems", text: "SPLIT BRAIN: the nodes' data diverged; choose the survivor with prim." }) : null;
  const verbs = el("div", { class: "verbs" }, VERBS.map((verb) => {
    const key = module + "|" + node + "|" + verb;
    const busy = pending.has(key);
    return el("button", {
      type: "button", id: "btn-" + module + "-" + node + "-" + verb, "data-verb": verb,
      class: (busy ? "pending" : "") + (["prim", "forcestop"].includes(verb) ? " danger" : ""),
      disabled: busy || !info.own || pending.size > 0,
      title: info.own ? verb + " " + module + " on " + node : node + " is unreachable",
      text: busy ? verb + "…" : verb,
      onclick: () => runVerb(module, node, verb),
    });
  }));
  return el("div", { class: classes.join(" ") }, head,
    el("div", {}, badge, since), reason, problems, split,
    info.own ? replication(module, node, m) : null,
    info.own ? checkers(m) : null,
    verbs, logBox(module, node, info.own));
}

function moduleCard(module) {
  const nodes = view.nodes.map((n) => n.node);
  const infos = nodes.map((n) => moduleOn(view, n, module));
  const prims = nodes.filter((n, i) => infos[i] && PRIMARY_STATES.includes(infos[i].m.state));
  let line;
  if (prims.length === 1) {
    const st = infos[nodes.indexOf(prims[0])].m.state;
    line = el("span", { class: "primary-line", id: "primary-" + module, "data-primary": prims[0],
      text: "primary: " + prims[0] + (st === "ALONE" ? " (ALONE: peer not in sync)" : "") });
  } else if (prims.length > 1) {
    line = el("span", { class: "primary-line none", id: "primary-" + module, "data-primary": prims.join(","),
      text: "BOTH NODES PRIMARY: " + prims.join(", ") });
  } else {
    line = el("span", { class: "primary-line none", id: "primary-" + module, "data-primary": "",
      text: "NO PRIMARY: the application runs nowhere" });
  }
  const err = errors.get(module);
  const errBox = err ? el("div", { class: "module-error", id: "error-" + module, role: "alert" },
    el("span", { class: "text", text: err.verb + " on " + err.node + " refused: " + err.text }),
    el("button", { type: "button", class: "quiet", text: "dismiss", onclick: () => { errors.delete(module); render(); } })) : null;
  return el("section", { class: "module", id: "module-" + module },
    el("div", { class: "module-head" }, el("h2", { text: module }), line), errBox,
    el("div", { class: "matrix" }, nodes.map((n, i) => cell(module, n, infos[i]))));
}

function banners() {
  const out = [];
  const reachable = view.nodes.filter((n) => n.status);
  for (const n of view.nodes) {
    if (!n.status) {
      out.push(el("div", { class: "banner error", id: "banner-unreachable-" + n.node, role: "alert",
        text: "Node " + n.node + " cannot be reached: " + (n.error || "no answer") +
          ". Its column shows what the other node last heard from it." }));
    }
  }
  if (reachable.length > 0 && reachable.every((n) => !n.status.witness)) {
    out.push(el("div", { class: "banner warn", id: "banner-witness",
      text: "No witness: a cut link between the nodes can make both primary (split brain)." }));
  }
  if (reachable.some((n) => n.status.modules.some((m) => m.split_brain))) {
    out.push(el("div", { class: "banner error", id: "banner-split-brain", role: "alert",
      text: "Split brain: the nodes' data diverged. Nothing was merged or overwritten; choose the survivor with prim on it." }));
  }
  return out;
}

function nodeCards() {
  return view.nodes.map((n) => {
    if (!n.status) {
      return el("div", { class: "node-card" }, el("h3", { text: n.node }), el("div", { class: "net-down", text: "unreachable" }));
    }
    const s = n.status;
    return el("div", { class: "node-card" },
      el("h3", { text: n.node + (n.node === view.local ? " (this console)" : "") }),
      el("table", {},
        el("tr", {}, el("th", { text: "heartbeat network" }), el("th", { text: "peer " + s.peer })),
        s.heartbeats.map((h) => el("tr", {},
          el("td", { text: h.name }),
          el("td", {}, el("span", { class: h.up ? "net-up" : "net-down", text: h.up ? "up" : "DOWN" }),
            h.last_heard_ms_ago === null || h.last_heard_ms_ago === undefined ? "" : ", heard " + duration(h.last_heard_ms_ago) + " ago",
            h.rtt_us === null || h.rtt_us === undefined ? "" : ", rtt " + micros(h.rtt_us),
            h.missed > 0 ? ", " + h.missed + " heartbeats missed" : "",
            h.last_error ? el("div", { class: "figures", text: "last error: " + h.last_error }) : "")))),
      el("div", { class: "figures", text: s.witness ? "witness: " + s.witness : "no witness" }));
  });
}

function render() {
  if (!view) return;
  document.getElementById("cluster").textContent = view.cluster;
  document.getElementById("local").textContent = view.local;
  document.getElementById("banners").replaceChildren(...banners());
  const scroll = new Map();
  for (const box of document.querySelectorAll("[data-log]")) scroll.set(box.dataset.log, box.scrollTop);
  document.getElementById("modules").replaceChildren(...moduleNames(view).map(moduleCard));
  for (const box of document.querySelectorAll("[data-log]")) {
    box.scrollTop = scroll.has(box.dataset.log) ? scroll.get(box.dataset.log) : box.scrollHeight;
  }
  document.getElementById("nodes").replaceChildren(...nodeCards());
  ages();
}

function ages() {
  const now = Date.now();
  for (const e of document.querySelectorAll("[data-since]")) {
    e.textContent = "for " + duration(now - Number(e.dataset.since));
  }
}

function noteProgress(v) {
  for (const n of v.nodes) {
    if (!n.status) continue;
    for (const m of n.status.modules) {
      const key = m.name + "|" + n.node;
      if (!m.progress) { lastProgress.delete(key); rates.delete(key); continue; }
      const prev = lastProgress.get(key);
      const now = Date.now();
      if (prev && m.progress.done_bytes > prev.done && now > prev.at) {
        const r = (1000 * (m.progress.done_bytes - prev.done)) / (now - prev.at);
        rates.set(key, rates.has(key) ? 0.7 * rates.get(key) + 0.3 * r : r);
      }
      if (!prev || m.progress.done_bytes !== prev.done) lastProgress.set(key, { done: m.progress.done_bytes, at: now });
    }
  }
}

async function fetchLogs(force) {
  if (!view) return;
  const now = Date.now();
  if (!force && now - logsFetchedAt < 1500) return;
  logsFetchedAt = now;
  const jobs = [];
  for (const module of moduleNames(view)) {
    for (const n of view.nodes) {
      if (!n.status && n.node !== view.local) continue;
      const key = module + "|" + n.node;
      const path = "/api/v1/modules/" + encodeURIComponent(module) + "/log?lines=" + LOG_LINES + "&node=" + encodeURIComponent(n.node);
      jobs.push(api("GET", path).then((r) => {
        logs.set(key, r.status === 200 ? r.data.entries : { error: r.data.error });
      }).catch(() => {}));
    }
  }
  await Promise.all(jobs);
  render();
}

function setLive(cls, text) {
  const e = document.getElementById("live");
  e.className = "live " + cls;
  e.textContent = text;
}

function connect() {
  const source = new EventSource("/api/v1/events");
  source.addEventListener("status", (ev) => {
    view = JSON.parse(ev.data);
    receivedAt = Date.now();
    noteProgress(view);
    setLive("ok", "live");
    render();
    fetchLogs(false);
  });
  source.addEventListener("open", () => setLive("ok", "live"));
  source.addEventListener("error", async () => {
    setLive("lost", "connection to the console lost: retrying…");
    if (source.readyState === EventSource.CLOSED) {
      // Refused (logged out?) or gone: check, then start again.
      try { await api("GET", "/api/v1/session"); } catch (_) { return; }
      setTimeout(connect, 2000);
    }
  });
}

async function start() {
  document.getElementById("logout").addEventListener("click", async () => {
    try { await api("POST", "/logout", {}); } catch (_) { /* already out */ }
    window.location.assign("/login");
  });
  const r = await api("GET", "/api/v1/session");
  session = r.data;
  document.getElementById("local").textContent = session.node;
  document.getElementById("cluster").textContent = session.cluster;
  connect();
  setInterval(ages, 1000);
  setInterval(() => fetchLogs(false), LOG_REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
