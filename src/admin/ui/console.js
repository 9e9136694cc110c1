// The Gatehouse console: a single page over the admin API. No framework and no other
// origin: the gateway serves this file, and every call goes to the same listener with the
// token the operator logged in with. DOM is built from text nodes only (never innerHTML
// with data), so a route or consumer name cannot inject markup.
"use strict";

const state = { token: sessionStorage.getItem("gatehouse-token") || "", role: "read", timer: null, history: [], prev: null };

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function svgEl(tag, attrs) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

async function api(path, opts = {}) {
  const headers = Object.assign({ authorization: "Bearer " + state.token }, opts.headers || {});
  if ((opts.method || "GET") !== "GET") headers["content-type"] = "application/json";
  const r = await fetch(path, { method: opts.method || "GET", headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  const type = r.headers.get("content-type") || "";
  const data = type.includes("json") ? await r.json().catch(() => ({})) : await r.text();
  if (r.status === 401) { logout("Your token was refused: log in again."); }
  return { status: r.status, ok: r.ok, data, etag: r.headers.get("etag") };
}

// ---- login -------------------------------------------------------------------------

async function login(token) {
  state.token = token;
  const r = await api("/session");
  if (!r.ok) {
    state.token = "";
    return r.status === 401 ? "That token is not valid." : "Login failed: " + (r.data.error || r.status);
  }
  sessionStorage.setItem("gatehouse-token", token);
  state.role = r.data.role;
  document.getElementById("who").textContent = `Signed in as ${r.data.token} (${r.data.role === "write" ? "can edit" : "read-only"})`;
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  document.getElementById("view").hidden = false;
  route();
  return null;
}

function logout(message) {
  sessionStorage.removeItem("gatehouse-token");
  state.token = "";
  stop();
  document.getElementById("login").hidden = false;
  document.getElementById("nav").hidden = true;
  document.getElementById("logout").hidden = true;
  document.getElementById("view").hidden = true;
  document.getElementById("who").textContent = "";
  document.getElementById("login-error").textContent = message || "";
}

const canWrite = () => state.role === "write";

// ---- views -------------------------------------------------------------------------

function stop() { if (state.timer) clearInterval(state.timer); state.timer = null; }
function every(ms, fn) { stop(); fn(); state.timer = setInterval(fn, ms); }

function show(...nodes) {
  const v = document.getElementById("view");
  v.replaceChildren(...nodes);
}

function route() {
  if (!state.token) return;
  const [, page, name] = (location.hash || "#/overview").split("/");
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#/" + page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  const name_ = name ? decodeURIComponent(name) : null;
  const views = { overview, routes, upstreams, consumers, certificates, alerts };
  stop();
  (views[page] || overview)(name_);
  document.getElementById("main").focus({ preventScroll: true });
}

function table(headers, rows, caption) {
  return el("div", { class: "table-wrap" }, el("table", {},
    caption ? el("caption", { class: "hint" }, caption) : null,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
}

// ---- overview: rates from two scrapes of /metrics -----------------------------------

function parseMetrics(text) {
  const out = { requests: {}, errors: {}, buckets: {} };
  const re = /^(\w+)\{([^}]*)\} ([0-9.eE+-]+|\+Inf|NaN)$/;
  for (const line of text.split("\n")) {
    const m = re.exec(line);
    if (!m) continue;
    const labels = {};
    for (const kv of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[kv[1]] = kv[2];
    const v = Number(m[3]);
    if (m[1] === "gatehouse_requests_total") {
      out.requests[labels.route] = (out.requests[labels.route] || 0) + v;
      if (Number(labels.status) >= 500) out.errors[labels.route] = (out.errors[labels.route] || 0) + v;
    } else if (m[1] === "gatehouse_request_duration_seconds_bucket") {
      (out.buckets[labels.route] ||= {})[labels.le] = v;
    }
  }
  return out;
}

function p99(now, before) {
  const les = Object.keys(now || {}).sort((a, b) => (a === "+Inf") - (b === "+Inf") || Number(a) - Number(b));
  const d = les.map((le) => [le, (now[le] || 0) - ((before || {})[le] || 0)]);
  const total = d.length ? d[d.length - 1][1] : 0;
  if (total <= 0) return null;
  const hit = d.find(([, c]) => c >= 0.99 * total);
  return hit && hit[0] !== "+Inf" ? Number(hit[0]) * 1000 : null;
}

function sum(o) { return Object.values(o).reduce((a, b) => a + b, 0); }

function chart(id, title, unit) {
  const line = svgEl("polyline", { points: "" });
  const svg = svgEl("svg", { viewBox: "0 0 100 40", preserveAspectRatio: "none", role: "img", "aria-label": title + " over the last minutes" });
  svg.append(line);
  const value = el("div", { class: "value", id: id + "-value", "aria-live": "off" }, "–");
  return el("section", { class: "card", id, "data-points": "0", "aria-labelledby": id + "-title" },
    el("h3", { id: id + "-title" }, title + (unit ? ` (${unit})` : "")), value, svg);
}

function plot(id, values, fmt) {
  const card = document.getElementById(id);
  if (!card) return;
  const pts = values.filter((v) => v !== null);
  const max = Math.max(1e-9, ...pts);
  const n = values.length;
  const coords = values.map((v, i) => v === null ? null : `${n <= 1 ? 100 : (i / (n - 1)) * 100},${40 - (v / max) * 38}`).filter(Boolean);
  card.querySelector("polyline").setAttribute("points", coords.join(" "));
  card.dataset.points = String(pts.length);
  const last = values[values.length - 1];
  card.dataset.latest = last === null || last === undefined ? "" : String(last);
  document.getElementById(id + "-value").textContent = last === null || last === undefined ? "–" : fmt(last);
}

function overview() {
  show(el("h2", {}, "Overview"),
    el("div", { class: "cards" }, chart("chart-rps", "Requests per second"), chart("chart-errors", "Error rate", "%"), chart("chart-p99", "p99 latency", "ms")),
    el("h2", {}, "Per route"), el("div", { id: "per-route" }, el("p", { class: "hint" }, "Waiting for the second sample…")));
  every(2000, async () => {
    const r = await api("/metrics");
    if (!r.ok) return;
    const now = { t: performance.now(), m: parseMetrics(r.data) };
    const prev = state.prev;
    state.prev = now;
    if (!prev) return;
    const dt = (now.t - prev.t) / 1000;
    const dReq = sum(now.m.requests) - sum(prev.m.requests);
    const dErr = sum(now.m.errors) - sum(prev.m.errors);
    // The whole gateway's p99: the bucket counts of every route, added.
    const all = (m) => { const o = {}; for (const b of Object.values(m.buckets)) for (const [le, c] of Object.entries(b)) o[le] = (o[le] || 0) + c; return o; };
    state.history.push({ rps: dReq / dt, err: dReq > 0 ? (100 * dErr) / dReq : 0, p99: p99(all(now.m), all(prev.m)) });
    state.history = state.history.slice(-60);
    plot("chart-rps", state.history.map((h) => h.rps), (v) => v.toFixed(1));
    plot("chart-errors", state.history.map((h) => h.err), (v) => v.toFixed(2) + "%");
    plot("chart-p99", state.history.map((h) => h.p99), (v) => v.toFixed(1) + " ms");
    const rows = Object.keys(now.m.requests).sort().map((rt) => {
      const d = now.m.requests[rt] - (prev.m.requests[rt] || 0);
      const e = (now.m.errors[rt] || 0) - (prev.m.errors[rt] || 0);
      const q = p99(now.m.buckets[rt], prev.m.buckets[rt]);
      return [rt, (d / dt).toFixed(1), d > 0 ? ((100 * e) / d).toFixed(2) + "%" : "–", q === null ? "–" : q.toFixed(1) + " ms"];
    });
    document.getElementById("per-route")?.replaceChildren(table(["Route", "Requests/s", "Errors", "p99"], rows));
  });
}

// ---- lists -------------------------------------------------------------------------

async function routes(name) {
  if (name !== null && canWrite()) return editor("routes", name === "new" ? null : name);
  const [s, c] = await Promise.all([api("/status"), api("/config")]);
  const defined = c.data.config?.routes || {};
  const rows = (s.data.routes || []).map((r) => [
    r.name, (r.hosts || []).join(", ") || "any", (r.paths || []).join(", "), (r.methods || []).join(", ") || "any", r.upstream || "–",
    (r.plugins || []).join(", "),
    canWrite() && defined[r.name] ? el("a", { href: `#/routes/${encodeURIComponent(r.name)}` }, `Edit ${r.name}`) : "",
  ]);
  show(el("h2", {}, "Routes"),
    canWrite() ? el("p", {}, el("a", { href: "#/routes/new", id: "new-route", role: "button" }, "New route")) : null,
    table(["Name", "Hosts", "Paths", "Methods", "Upstream", "Plugins", ""], rows));
}

async function upstreams(name) {
  if (name && name.startsWith("edit:") && canWrite()) return editor("upstreams", name.slice(5) || null);
  if (name) return upstream(name);
  const s = await api("/status");
  const rows = Object.entries(s.data.clusters || {}).map(([n, c]) => [
    el("a", { href: `#/upstreams/${encodeURIComponent(n)}` }, n), c.balance, `${c.healthy} of ${c.targets.length} healthy`,
  ]);
  show(el("h2", {}, "Upstreams"),
    canWrite() ? el("p", {}, el("a", { href: "#/upstreams/edit:", id: "new-upstream", role: "button" }, "New upstream")) : null,
    table(["Name", "Balance", "Health"], rows));
}

function upstream(name) {
  const body = el("div", { id: "targets" });
  show(el("h2", {}, `Upstream ${name}`), body,
    canWrite() ? el("p", {}, el("a", { href: `#/upstreams/edit:${encodeURIComponent(name)}`, role: "button" }, `Edit ${name}`)) : null);
  every(1000, async () => {
    const s = await api("/status");
    const c = (s.data.clusters || {})[name];
    if (!c) { body.replaceChildren(el("p", {}, "No such upstream.")); return; }
    body.replaceChildren(table(["Target", "Health", "In flight", "Ejected", "Ejections"], c.targets.map((t) => [
      t.addr, el("span", { class: t.healthy ? "healthy" : "unhealthy", "data-target": t.addr }, t.healthy ? "healthy" : "unhealthy"),
      String(t.in_flight), t.ejected ? "yes" : "no", String(t.ejections),
    ])));
  });
}

async function consumers(name) {
  if (name !== null && canWrite()) return editor("consumers", name === "new" ? null : name);
  const c = await api("/config");
  const cfg = c.data.config || {};
  const list = Object.entries(cfg.consumers || {});
  const usage = await Promise.all(list.map(([n]) => api("/usage/" + encodeURIComponent(n))));
  const rows = list.map(([n, v], i) => {
    const plan = v.plan ? (cfg.plans || {})[v.plan] : null;
    const quota = plan && plan.quota ? `${plan.quota.requests} per ${plan.quota.per}` : "none";
    const rows = usage[i].ok ? usage[i].data.usage || [] : null;
    const used = rows === null ? "–" : rows.map((u) => `${u.used} (${u.scope}, ${u.period})`).join(", ") || "0";
    return [n, v.plan || "–", (v.groups || []).join(", "), used, quota,
      canWrite() ? el("a", { href: `#/consumers/${encodeURIComponent(n)}` }, `Edit ${n}`) : ""];
  });
  show(el("h2", {}, "Consumers"),
    canWrite() ? el("p", {}, el("a", { href: "#/consumers/new", role: "button" }, "New consumer")) : null,
    table(["Name", "Plan", "Groups", "Used", "Quota", ""], rows));
}

async function certificates() {
  const s = await api("/status");
  const rows = (s.data.certificates || []).map((c) => {
    const days = Math.floor((Date.parse(c.not_after) - Date.now()) / 86400000);
    return [c.name, (c.hosts || []).join(", "), c.not_after, el("span", { class: days < 14 ? "unhealthy" : "healthy" }, `${days} days`), c.source];
  });
  show(el("h2", {}, "Certificates"), rows.length ? table(["Name", "Hosts", "Expires", "Left", "Source"], rows) : el("p", {}, "No certificates."));
}

async function alerts() {
  const a = await api("/alerts");
  const rows = (a.data.alerts || []).map((x) => [x.rule, el("span", { class: x.state === "firing" ? "unhealthy" : "warn" }, x.state),
    Object.entries(x.labels || {}).map(([k, v]) => `${k}=${v}`).join(" "), x.activeSince]);
  show(el("h2", {}, "Active alerts"), rows.length ? table(["Rule", "State", "Labels", "Since"], rows) : el("p", {}, "No active alerts."));
}

// ---- edit forms ------------------------------------------------------------------------

// Which keys get their own field; every other key of the entry stays in "Other keys".
const FORMS = {
  routes: [
    { key: "paths", label: "Paths", list: true, hint: "One per line, e.g. /api/" },
    { key: "hosts", label: "Hosts", list: true, hint: "One per line; empty: any host" },
    { key: "methods", label: "Methods", list: true, hint: "One per line; empty: any method" },
    { key: "upstream", label: "Upstream", suggest: "upstreams" },
    { key: "strip_prefix", label: "Strip the matched prefix", bool: true },
  ],
  upstreams: [
    { key: "targets", label: "Targets", list: true, hint: "IP:port, one per line" },
    { key: "balance", label: "Balance", hint: "round_robin, least_conn, …" },
  ],
  consumers: [
    { key: "plan", label: "Plan", suggest: "plans" },
    { key: "groups", label: "Groups", list: true, hint: "One per line" },
    { key: "keys", label: "API keys", list: true, hint: "One per line: a literal, env:NAME or file:/path. Stored keys show as <redacted>; leave them to keep them." },
  ],
};
const SINGULAR = { routes: "route", upstreams: "upstream", consumers: "consumer" };

async function editor(section, name) {
  const cfg = await api("/config");
  let etag = cfg.etag;
  const current = name ? (cfg.data.config?.[section] || {})[name] || {} : {};

  // A list field shows strings one per line; a list of tables (weighted targets) stays
  // in "Other keys" as JSON, where it can be edited without losing its fields.
  const plain = (f) => !f.list || (current[f.key] || []).every((x) => typeof x === "string");
  const formFields = FORMS[section].filter(plain);
  const rest = Object.fromEntries(Object.entries(current).filter(([k]) => !formFields.some((f) => f.key === k)));
  const inputs = {};
  const errors = {};
  const general = el("p", { class: "field-error", id: "err-general", role: "alert" });
  const diff = el("pre", { class: "diff", id: "diff", hidden: true, "aria-label": "Changes" });
  const result = el("p", { class: "status", id: "result", role: "status", hidden: true });
  const fields = formFields;
  const fieldNodes = fields.map((f) => {
    const id = "f-" + f.key;
    errors[f.key] = el("p", { class: "field-error", id: "err-" + f.key, role: "alert" });
    const v = current[f.key];
    let input;
    if (f.bool) input = el("input", { id, type: "checkbox", checked: !!v });
    else if (f.list) input = el("textarea", { id, rows: 3, "aria-describedby": `hint-${f.key} err-${f.key}` });
    else input = el("input", { id, type: "text", list: f.suggest ? "dl-" + f.key : null, "aria-describedby": `err-${f.key}` });
    if (f.list) input.value = (v || []).join("\n");
    else if (!f.bool) input.value = v ?? "";
    inputs[f.key] = input;
    const suggestions = f.suggest ? el("datalist", { id: "dl-" + f.key }, Object.keys(cfg.data.config?.[f.suggest] || {}).map((n) => el("option", { value: n }))) : null;
    return el("div", { class: "field" }, el("label", { for: id }, f.label), f.hint ? el("p", { class: "hint", id: "hint-" + f.key }, f.hint) : null, input, suggestions, errors[f.key]);
  });
  const nameInput = el("input", { id: "f-name", type: "text", required: true, pattern: "[A-Za-z0-9_.-]+", "aria-describedby": "err-name", value: name || "", readonly: !!name });
  errors.name = el("p", { class: "field-error", id: "err-name", role: "alert" });
  const other = el("textarea", { id: "f-other", rows: 5, "aria-describedby": "hint-other err-other" });
  other.value = Object.keys(rest).length ? JSON.stringify(rest, null, 2) : "";
  errors.other = el("p", { class: "field-error", id: "err-other", role: "alert" });

  function value() {
    const v = {};
    let extra = {};
    if (other.value.trim()) extra = JSON.parse(other.value);
    Object.assign(v, extra);
    for (const f of fields) {
      const i = inputs[f.key];
      if (f.bool) { if (i.checked) v[f.key] = true; }
      else if (f.list) { const l = i.value.split("\n").map((s) => s.trim()).filter(Boolean); if (l.length) v[f.key] = l; }
      else if (i.value.trim()) v[f.key] = i.value.trim();
    }
    return v;
  }

  function clear() {
    for (const [k, e] of Object.entries(errors)) { e.textContent = ""; (inputs[k] || (k === "name" ? nameInput : other)).removeAttribute("aria-invalid"); }
    general.textContent = "";
  }

  // A key path such as routes.NAME.upstream names the field; anything else goes to
  // "Other keys" or, when it names no key of the entry, above the buttons.
  function showErrors(list) {
    for (const e of list) {
      const prefix = `${section}.${nameInput.value}`;
      let target = null;
      if (e.key === prefix || e.key.startsWith(prefix + ".")) {
        const field = e.key.slice(prefix.length + 1).split(/[.[]/)[0];
        target = errors[field] ? field : "other";
        if (!field) target = null;
      }
      const node = target ? errors[target] : general;
      node.textContent = (node.textContent ? node.textContent + " " : "") + (target ? e.reason : `${e.key || e.file}: ${e.reason}`);
      if (target) (inputs[target] || other).setAttribute("aria-invalid", "true");
    }
    const first = document.querySelector('[aria-invalid="true"]');
    if (first) first.focus();
  }

  async function check(ev) {
    ev.preventDefault();
    clear();
    result.hidden = true;
    if (!nameInput.value.match(/^[A-Za-z0-9_.-]+$/)) { errors.name.textContent = "Letters, digits, dot, dash or underscore."; nameInput.setAttribute("aria-invalid", "true"); nameInput.focus(); return; }
    let v;
    try { v = value(); } catch (e) { errors.other.textContent = "Not JSON: " + e.message; other.setAttribute("aria-invalid", "true"); other.focus(); return; }
    const r = await api("/config/validate", { method: "POST", body: { section, name: nameInput.value, value: v } });
    if (r.status === 422) { diff.hidden = true; save.hidden = true; return showErrors(r.data.errors || [{ key: "", reason: r.data.error }]); }
    if (!r.ok) { general.textContent = r.data.error || "Validation failed: " + r.status; return; }
    renderDiff(r.data.diff || "(no change)");
    save.hidden = false;
    save.focus();
  }

  function renderDiff(text) {
    diff.replaceChildren(...text.split("\n").map((l) => el("span", { class: l.startsWith("+") ? "add" : l.startsWith("-") ? "del" : null }, l + "\n")));
    diff.hidden = false;
  }

  async function doSave() {
    clear();
    const r = await api(`/config/${section}/${encodeURIComponent(nameInput.value)}`, { method: "PUT", body: value(), headers: { "if-match": etag } });
    if (r.status === 422) { save.hidden = true; return showErrors(r.data.errors || [{ key: "", reason: r.data.error }]); }
    if (r.status === 412) { general.textContent = "The config changed since this form opened: reopen it to see the latest."; return; }
    if (!r.ok) { general.textContent = r.data.error || "Save failed: " + r.status; return; }
    if (r.etag) etag = r.etag;
    result.textContent = `Saved ${SINGULAR[section]} ${nameInput.value}: config ${r.data.hash} is serving.`;
    result.hidden = false;
    save.hidden = true;
  }

  async function doDelete() {
    if (!confirm(`Delete ${SINGULAR[section]} ${name}?`)) return;
    clear();
    const r = await api(`/config/${section}/${encodeURIComponent(name)}`, { method: "DELETE", headers: { "if-match": etag } });
    if (r.status === 422) return showErrors(r.data.errors || []);
    if (!r.ok) { general.textContent = r.data.error || "Delete failed: " + r.status; return; }
    if (r.etag) etag = r.etag;
    result.textContent = `Deleted ${SINGULAR[section]} ${name}.`;
    result.hidden = false;
  }

  const save = el("button", { type: "button", id: "save", hidden: true, onclick: doSave }, "Save");
  const form = el("form", { class: "edit", id: "edit-form", onsubmit: check, novalidate: true },
    el("div", { class: "field" }, el("label", { for: "f-name" }, "Name"), nameInput, errors.name),
    fieldNodes,
    el("div", { class: "field" }, el("label", { for: "f-other" }, "Other keys (JSON)"),
      el("p", { class: "hint", id: "hint-other" }, "The entry's other TOML keys as a JSON object, e.g. plugins."), other, errors.other),
    general,
    el("div", { class: "actions" }, el("button", { type: "submit", id: "check" }, "Check changes"), save,
      name ? el("button", { type: "button", class: "danger", onclick: doDelete }, "Delete") : null),
    diff, result);
  show(el("h2", {}, name ? `Edit ${SINGULAR[section]} ${name}` : `New ${SINGULAR[section]}`), form);
  (name ? fieldNodes[0].querySelector("input, textarea") : nameInput).focus();
}

// ---- start -------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = await login(document.getElementById("token").value);
    document.getElementById("login-error").textContent = err || "";
  });
  document.getElementById("logout").addEventListener("click", () => logout());
  window.addEventListener("hashchange", route);
  if (state.token) login(state.token);
});
