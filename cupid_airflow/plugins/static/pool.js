// The cupid page: overview, item lists and item views of each config's delivery store.
// Everything from the server is put into the page as text (textContent), never as HTML.
"use strict";

const BASE = document.querySelector('meta[name="cupid-base"]').content;
const AIRFLOW = document.querySelector('meta[name="airflow-base"]').content;
const STATUSES = ["pending", "parked", "dead", "delivered", "resolved", "superseded"];
const UNDELIVERED = ["pending", "parked", "dead"];
const REQUEUE_FROM = ["parked", "dead", "delivered", "resolved"];
const TYPES = { 1: "missing", 2: "different", 3: "deleted at source" };
const UNITS = { s: 1, min: 60, h: 3600, d: 86400 };

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const notice = document.getElementById("notice");
let canEdit = {};  // config -> bool

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function say(text, bad) {
  notice.hidden = !text;
  notice.className = bad ? "bad" : "";
  notice.textContent = text || "";
}

async function api(path, body) {
  const options = { credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(BASE + "api/" + path, options);
  if (response.status === 401) {
    window.location.assign(BASE);
    throw new Error("signed out");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail
      : Array.isArray(data.detail) ? data.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ")
      : response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}

function number(n, capped) { return n.toLocaleString("en") + (capped ? "+" : ""); }

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return `${seconds} s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)} h`;
  return `${Math.floor(seconds / 86400)} d`;
}

function here(params) { return "?" + new URLSearchParams(params).toString(); }

function go(params, replace) {
  const url = here(params);
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  render();
}

function link(text, params, attrs) {
  return el("a", { href: here(params), ...attrs, onclick: (e) => { e.preventDefault(); go(params); } }, text);
}

// Links to Airflow's own pages open in the main window (this page runs in the UI's frame).
function airflowLink(text, path) {
  const url = AIRFLOW + path;
  return el("a", {
    href: url,
    onclick: (event) => {
      try {
        if (window.parent !== window && window.parent.location.origin === window.location.origin) {
          event.preventDefault();
          window.parent.history.pushState(null, "", url);
          window.parent.dispatchEvent(new PopStateEvent("popstate", { state: null }));
        }
      } catch (err) { /* a parent of another origin: follow the link here */ }
    },
  }, text);
}

function setCrumbs(...parts) {
  crumbs.replaceChildren(...parts.flatMap((p, i) => (i ? [el("span", { class: "muted" }, "›"), p] : [p])));
}

// -- overview ------------------------------------------------------------------------------------------

async function renderOverview() {
  setCrumbs(el("span", {}, "Overview"));
  const { configs } = await api("configs");
  canEdit = Object.fromEntries(configs.map((c) => [c.config, c.can_edit]));
  if (!configs.length) {
    main.replaceChildren(el("p", { class: "muted" }, "No config whose DAGs you may read."));
    return;
  }
  const sections = configs.map((c) => {
    const body = el("div", { class: "body" }, el("p", { class: "muted" }, "Loading…"));
    const section = el("section", { class: "config", "data-config": c.config },
      el("div", { class: "head" }, el("h2", {}, c.config),
        el("span", { class: "dags" }, c.dags.map((d) => airflowLink(d, `dags/${encodeURIComponent(d)}`)))),
      body);
    loadOverview(c.config, body);
    return section;
  });
  main.replaceChildren(...sections);
}

async function loadOverview(config, body) {
  let data;
  try {
    data = await api(`configs/${encodeURIComponent(config)}/overview`);
  } catch (err) {
    body.replaceChildren(el("p", { class: "muted" }, String(err.message)));
    return;
  }
  const head = ["destination", "callback", "pending", "parked", "dead", "delivered 24 h", "resolved 24 h",
    "oldest pending", "oldest parked", "being sent", "circuit", "last error"];
  const rows = data.destinations.map((d) => {
    const count = (status) => {
      const n = d.counts[status];
      const text = number(n, d.capped.includes(status));
      if (!d.registered || !n) return el("td", { class: "num" }, text);
      const params = { config, destination: d.destination, status };
      return el("td", { class: "num" }, link(text, params, { class: `s-${status}`, "data-count": status }));
    };
    const circuit = d.circuit_open_second > 0 ? el("span", { class: "open" }, `open ${Math.ceil(d.circuit_open_second)} s`)
      : d.circuit_opened ? el("span", { class: "open" }, "probing")
      : el("span", { class: "closed" }, d.circuit_failures ? `closed (${d.circuit_failures} failures)` : "closed");
    const name = d.registered
      ? link(d.destination, { config, destination: d.destination, status: UNDELIVERED.join(",") })
      : el("span", {}, d.name);
    return el("tr", { class: d.orphaned ? "orphaned" : "", "data-destination": d.destination },
      el("td", {}, name,
        d.orphaned ? el("div", { class: "note", title: "not in the config any more: nothing sends its items" },
          `orphaned: ${d.orphaned} undelivered`) : null,
        d.registered ? null : el("div", { class: "note" }, "no task has seen it yet")),
      el("td", { class: "callback" }, el("code", {}, d.callback || "–")),
      count("pending"), count("parked"), count("dead"), count("delivered"), count("resolved"),
      el("td", { class: "num" }, age(d.oldest_pending_second)),
      el("td", { class: "num" }, age(d.oldest_parked_second)),
      el("td", { class: "num" }, String(d.claimed)),
      el("td", {}, circuit),
      d.last_error || d.last_send_error
        ? el("td", { class: "error", title: d.last_send_error || "" }, d.last_error || d.last_send_error)
        : el("td", { class: "none" }, "–"));
  });
  body.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, head.map((h, i) => el("th", { class: i >= 2 && i <= 9 ? "num" : "" }, h)))),
    el("tbody", {}, rows)));
}

// -- lists -----------------------------------------------------------------------------------------------

function filterOf(params) {
  const statuses = (params.get("status") || "parked,dead").split(",").filter((s) => STATUSES.includes(s));
  const f = { status: statuses.length ? statuses : ["parked", "dead"] };
  if (params.get("type")) f.type = Number(params.get("type"));
  if (params.get("key_prefix")) f.key_prefix = params.get("key_prefix");
  if (params.get("min_age")) f.min_age_second = Number(params.get("min_age"));
  if (params.get("max_age")) f.max_age_second = Number(params.get("max_age"));
  return f;
}

function query(filter, extra) {
  const q = new URLSearchParams();
  filter.status.forEach((s) => q.append("status", s));
  for (const key of ["type", "key_prefix", "min_age_second", "max_age_second"]) {
    if (filter[key] !== undefined) q.set(key, filter[key]);
  }
  for (const [key, value] of Object.entries(extra)) if (value) q.set(key, value);
  return q.toString();
}

function filterForm(params, filter) {
  const ageInput = (name, seconds) => {
    const unit = seconds && seconds % 86400 === 0 ? "d" : seconds && seconds % 3600 === 0 ? "h" : seconds && seconds % 60 === 0 ? "min" : "s";
    return [el("input", { type: "number", min: 0, name, value: seconds ? seconds / UNITS[unit] : "" }),
      el("select", { name: name + "_unit" }, Object.keys(UNITS).map((u) => el("option", { value: u, selected: u === unit }, u)))];
  };
  const form = el("form", { class: "filters" },
    el("fieldset", {}, el("legend", {}, "status"),
      STATUSES.map((s) => el("label", {}, el("input", { type: "checkbox", name: "status", value: s, checked: filter.status.includes(s) }), s))),
    el("label", {}, "type ", el("select", { name: "type" }, el("option", { value: "" }, "any"),
      Object.entries(TYPES).map(([n, t]) => el("option", { value: n, selected: filter.type === Number(n) }, `${n} ${t}`)))),
    el("label", {}, "key starts with ", el("input", { type: "text", name: "key_prefix", maxlength: 255, value: filter.key_prefix || "" })),
    el("label", {}, "older than ", ageInput("min_age", filter.min_age_second)),
    el("label", {}, "newer than ", ageInput("max_age", filter.max_age_second)),
    el("label", {}, "order ", el("select", { name: "order" },
      el("option", { value: "newest", selected: params.get("order") !== "oldest" }, "newest queued first"),
      el("option", { value: "oldest", selected: params.get("order") === "oldest" }, "oldest queued first"))),
    el("button", { type: "submit", class: "primary" }, "Apply"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = { config: params.get("config"), destination: params.get("destination"), status: data.getAll("status").join(",") };
    if (data.get("type")) next.type = data.get("type");
    if (data.get("key_prefix")) next.key_prefix = data.get("key_prefix");
    for (const name of ["min_age", "max_age"]) {
      if (data.get(name) !== "") next[name] = Math.round(Number(data.get(name)) * UNITS[data.get(name + "_unit")]);
    }
    if (data.get("order") === "oldest") next.order = "oldest";
    go(next);
  });
  return form;
}

async function renderList(params) {
  const config = params.get("config");
  const destination = params.get("destination");
  setCrumbs(link("Overview", {}), el("span", {}, config), el("span", {}, destination));
  if (!(config in canEdit)) {
    const { configs } = await api("configs");
    canEdit = Object.fromEntries(configs.map((c) => [c.config, c.can_edit]));
  }
  const filter = filterOf(params);
  const order = params.get("order") === "oldest" ? "oldest" : "newest";
  const page = await api(`configs/${encodeURIComponent(config)}/destinations/${encodeURIComponent(destination)}/items?`
    + query(filter, { cursor: params.get("cursor"), order, limit: 50 }));
  const editable = !!canEdit[config];
  const boxes = [];
  const rows = page.items.map((item) => {
    const box = editable ? el("input", { type: "checkbox", value: item.id, "data-status": item.status, "aria-label": `select item ${item.id}` }) : null;
    if (box) boxes.push(box);
    return el("tr", { "data-item": item.id, "data-status": item.status },
      editable ? el("td", {}, box) : null,
      el("td", { class: "num" }, link(String(item.id), { config, item: item.id })),
      el("td", { class: "key" }, item.key),
      el("td", {}, `${item.type} ${TYPES[item.type] || ""}`),
      el("td", {}, el("span", { class: `pill s-${item.status}` }, item.status), item.claimed ? el("span", { class: "muted" }, " being sent") : null),
      el("td", { class: "num" }, String(item.attempts)),
      el("td", { class: "num", title: item.queued_at }, age(item.age_second)),
      el("td", { class: "num" }, item.last_http_status === null ? "–" : String(item.last_http_status)),
      el("td", { class: "error" }, item.last_error || item.note || ""));
  });
  const head = [editable ? el("th", {}, el("input", { type: "checkbox", "aria-label": "select all", onchange: (e) => boxes.forEach((b) => { b.checked = e.target.checked; }) })) : null,
    el("th", { class: "num" }, "id"), el("th", {}, "key"), el("th", {}, "type"), el("th", {}, "status"),
    el("th", { class: "num" }, "attempts"), el("th", { class: "num" }, "age"), el("th", { class: "num" }, "last HTTP"), el("th", {}, "last error")];
  const selected = () => boxes.filter((b) => b.checked);
  const actions = editable ? el("div", { class: "actions" },
    el("button", { type: "button", onclick: () => act(config, "requeue", { destination, ids: selected().map((b) => Number(b.value)) }, false) }, "Requeue selected"),
    el("button", { type: "button", onclick: () => act(config, "purge", { destination, ids: selected().map((b) => Number(b.value)) }, selected().some((b) => UNDELIVERED.includes(b.dataset.status))) }, "Purge selected"),
    el("button", { type: "button", onclick: () => act(config, "requeue", { destination, filter: { ...filter, status: filter.status.filter((s) => REQUEUE_FROM.includes(s)) } }, false) }, "Requeue all matching…"),
    el("button", { type: "button", onclick: () => act(config, "purge", { destination, filter }, filter.status.some((s) => UNDELIVERED.includes(s))) }, "Purge all matching…"))
    : el("p", { class: "muted" }, "You may read this config's items; requeue and purge need the right to edit its DAGs.");
  const base = Object.fromEntries(params.entries());
  delete base.cursor;
  const pager = el("div", { class: "pager" },
    params.get("cursor") ? link("« first page", base) : null,
    page.next_cursor ? link("next page »", { ...base, cursor: page.next_cursor }, { "data-next": "" }) : el("span", { class: "muted" }, "end of list"));
  main.replaceChildren(filterForm(params, filter), actions,
    rows.length ? el("table", { id: "items" }, el("thead", {}, el("tr", {}, head)), el("tbody", {}, rows))
      : el("p", { class: "muted", id: "no-items" }, "No items match."), pager);
}

// -- actions ----------------------------------------------------------------------------------------------

function confirmDialog(title, text, button, lossy) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  const ok = document.getElementById("confirm-ok");
  ok.textContent = button;
  const loss = document.getElementById("confirm-loss");
  const lossBox = document.getElementById("confirm-loss-box");
  loss.hidden = !lossy;
  lossBox.checked = false;
  ok.disabled = lossy;
  lossBox.onchange = () => { ok.disabled = !lossBox.checked; };
  return new Promise((resolve) => {
    dialog.onclose = () => resolve(dialog.returnValue === "ok");
    dialog.returnValue = "";
    dialog.showModal();
  });
}

async function act(config, action, body, lossy) {
  say("");
  if (body.ids && !body.ids.length) { say("Select items first.", true); return; }
  if (body.filter && !body.filter.status.length) { say(`None of the chosen statuses can be ${action}d.`, true); return; }
  const path = `configs/${encodeURIComponent(config)}/${action}`;
  try {
    const preview = await api(path, { ...body, undelivered: lossy, confirm: false });
    if (!preview.matched) { say(`Nothing to ${action}: ${preview.ineligible} selected item(s) cannot be ${action}d.`, true); return; }
    const parts = [`${action === "requeue" ? "Requeue" : "Delete"} ${number(preview.matched, preview.capped)} item(s) of ${body.destination} (config ${config})?`];
    if (action === "requeue") parts.push("They go into the failure pool with a fresh attempt count; the failure-pool DAG sends them on its next run.");
    if (preview.claimed) parts.push(`${preview.claimed} of them are being sent right now and will be left alone.`);
    if (preview.ineligible) parts.push(`${preview.ineligible} selected item(s) cannot be ${action}d and stay as they are.`);
    if (preview.capped) parts.push("This acts on the first of them; run it again for the rest.");
    const verb = action === "requeue" ? "Requeue" : "Purge";
    if (!(await confirmDialog(`${verb} items`, parts.join(" "), `${verb} ${number(preview.matched, preview.capped)}`, lossy))) return;
    const done = await api(path, { ...body, undelivered: lossy, up_to_id: preview.up_to_id || undefined, confirm: true });
    const skipped = [];
    if (done.skipped_claimed) skipped.push(`${done.skipped_claimed} being sent`);
    if (done.skipped_other) skipped.push(`${done.skipped_other} changed meanwhile${action === "requeue" ? " or already live" : ""}`);
    if (done.ineligible) skipped.push(`${done.ineligible} not ${action}able`);
    say(`${verb}d ${done.acted} item(s)` + (skipped.length ? `; left alone: ${skipped.join(", ")}` : "") + (done.remaining ? "; more remain, run it again." : "."));
    await render(true);
  } catch (err) {
    say(err.message, true);
  }
}

// -- one item --------------------------------------------------------------------------------------------

async function renderItem(params) {
  const config = params.get("config");
  const id = params.get("item");
  const data = await api(`configs/${encodeURIComponent(config)}/items/${encodeURIComponent(id)}`);
  const item = data.item;
  setCrumbs(link("Overview", {}), el("span", {}, config),
    link(item.destination, { config, destination: item.destination, status: item.status }), el("span", {}, `item ${item.id}`));
  if (!(config in canEdit)) {
    const { configs } = await api("configs");
    canEdit = Object.fromEntries(configs.map((c) => [c.config, c.can_edit]));
  }
  const field = (name, value) => [el("dt", {}, name), el("dd", {}, value === null || value === undefined || value === "" ? "–" : value)];
  const fields = el("dl", { class: "fields" },
    field("status", el("span", { class: `pill s-${item.status}`, id: "item-status" }, item.status)),
    field("key", el("code", {}, item.key)), item.key_columns.length ? field("key columns", item.key_columns.join(", ")) : null,
    field("type", `${item.type} ${TYPES[item.type] || ""}`), field("origin", item.origin), field("source id", item.source_id),
    field("attempts", String(item.attempts)), field("being sent", item.claimed ? "yes" : "no"),
    field("revision", String(item.revision)), field("idempotency key (last sent)", item.idempotency_key && el("code", {}, item.idempotency_key)),
    field("last HTTP status", item.last_http_status === null ? null : String(item.last_http_status)),
    field("last error", item.last_error), field("note", item.note),
    field("detected", item.detected_at), field("queued", `${item.queued_at} (${age(item.age_second)} ago)`),
    field("updated", item.updated_at), field("delivered", item.delivered_at));
  const differences = data.differences ? el("table", {},
    el("thead", {}, el("tr", {}, el("th", {}, "column"), el("th", {}, "source"), el("th", {}, "destination"))),
    el("tbody", {}, Object.entries(data.differences).map(([column, pair]) => el("tr", {},
      el("td", {}, column), el("td", { class: "key" }, JSON.stringify(pair.source)), el("td", { class: "key" }, JSON.stringify(pair.destination))))))
    : el("p", { class: "muted" }, item.type === 2 ? "Not kept." : "None: the row was missing or deleted.");
  const attempts = data.attempts.length ? data.attempts.map((a) => el("div", { class: `attempt ${a.ok ? "ok" : "failed"}` },
    el("div", {}, el("strong", {}, a.ok ? "delivered" : "failed"), ` ${a.sentAt} · HTTP ${a.httpStatus ?? "–"} · ${a.elapsedMs} ms · type ${a.type}`),
    el("div", { class: "muted" }, "Idempotency-Key ", el("code", {}, a.idempotencyKey)),
    a.error ? el("div", { class: "error" }, a.error) : null,
    el("pre", {}, pretty(a.body) + (a.bodyCut ? "\n… (cut at 64 KiB)" : ""))))
    : [el("p", { class: "muted" }, "No callback was sent yet.")];
  const lossy = UNDELIVERED.includes(item.status);
  const actions = canEdit[config] ? el("div", { class: "actions" },
    REQUEUE_FROM.includes(item.status) ? el("button", { type: "button", class: "primary", onclick: () => act(config, "requeue", { destination: item.destination, ids: [item.id] }, false) }, "Requeue") : null,
    el("button", { type: "button", onclick: () => act(config, "purge", { destination: item.destination, ids: [item.id] }, lossy) }, "Purge")) : null;
  main.replaceChildren(...[fields, actions, el("h3", {}, "Differences when detected"), differences,
    el("h3", {}, `Attempts (newest ${data.attempts_shown} at most)`), ...attempts].filter(Boolean));
}

function pretty(body) {
  try { return JSON.stringify(JSON.parse(body), null, 2); } catch (err) { return body; }
}

// -- routing ----------------------------------------------------------------------------------------------

async function render(keepNotice) {
  if (!keepNotice) say("");
  const params = new URLSearchParams(window.location.search);
  try {
    if (params.get("config") && params.get("item")) await renderItem(params);
    else if (params.get("config") && params.get("destination")) await renderList(params);
    else await renderOverview();
  } catch (err) {
    main.replaceChildren(el("p", { class: "bad" }, err.message));
  }
}

window.addEventListener("popstate", () => render());
render();
