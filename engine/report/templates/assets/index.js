// Index table of the report: search, sort and page over every latent.
//
// Two row sources answer the same query {q, sort, desc, page}:
//   static (report written by `python -m engine.report`): rows live in chunk files
//     data/<sort dir>/<chunk>.js, one set per sort key in ascending order, loaded on
//     demand with <script> tags so the site works from file://. A descending sort
//     reads the ascending chunks backwards over the rows that have a value; rows
//     without one stay last (engine/report_data.py defines that order).
//   api (page served by `python -m engine.serve`): GET api/latents answers server-side.
// Rows are rendered with textContent only: labels and keys are data, never markup.
(function () {
  "use strict";
  const META = JSON.parse(document.getElementById("meta").textContent);
  const F = Object.fromEntries(META.fields.map((name, i) => [name, i]));
  const MAX_CHUNKS = 24;  // chunk files kept in memory (least recently used dropped)
  const table = document.getElementById("latents");
  const tbody = table.querySelector("tbody");
  const search = document.getElementById("search");
  const status = document.getElementById("status");
  const pageinfo = document.getElementById("pageinfo");
  const prev = document.getElementById("prev");
  const next = document.getElementById("next");
  const state = { q: "", sort: "latent", desc: false, page: 0 };
  let seq = 0;  // only the newest query renders

  // ------------------------------------------------------------------ static source
  const chunks = new Map();   // "s/c" -> Promise<rows>
  const waiting = new Map();  // "s/c" -> resolve
  window.__latentRows = function (s, c, rows) {
    const resolve = waiting.get(s + "/" + c);
    if (resolve) { waiting.delete(s + "/" + c); resolve(rows); }
  };

  function loadChunk(s, c) {
    const k = s + "/" + c;
    let p = chunks.get(k);
    if (p) { chunks.delete(k); chunks.set(k, p); return p; }
    p = new Promise((resolve, reject) => {
      waiting.set(k, resolve);
      const el = document.createElement("script");
      el.src = "data/" + META.sorts[s].dir + "/" + c + ".js";
      el.onload = () => el.remove();
      el.onerror = () => { waiting.delete(k); chunks.delete(k); el.remove(); reject(new Error("cannot load " + el.src)); };
      document.head.appendChild(el);
    });
    chunks.set(k, p);
    if (chunks.size > MAX_CHUNKS) chunks.delete(chunks.keys().next().value);
    return p;
  }

  function matches(row, terms) {
    const hay = (row[F.label] + "\n" + row[F.search_label] + "\n" + row[F.key]).toLowerCase();
    return terms.every((t) => hay.includes(t));
  }

  async function staticQuery(st) {
    const s = sortIndex(st.sort), n = META.n, C = META.chunk_size, PS = META.page_size;
    const np = META.sorts[s].n_present;
    const toAsc = (i) => (st.desc && i < np ? np - 1 - i : i);
    const terms = st.q.toLowerCase().split(/\s+/).filter(Boolean);
    let cur = -1, rows = null;
    const rowAt = async (i) => {
      const a = toAsc(i), c = Math.floor(a / C);
      if (c !== cur) { rows = await loadChunk(s, c); cur = c; }
      return rows[a - c * C];
    };
    const out = [];
    if (!terms.length) {
      for (let i = st.page * PS; i < Math.min(n, (st.page + 1) * PS); i++) out.push(await rowAt(i));
      return { rows: out, total: n, complete: true };
    }
    // Scan in display order until the page is full and one more match shows there are more.
    const lo = st.page * PS;
    let found = 0;
    for (let i = 0; i < n; i++) {
      const row = await rowAt(i);
      if (!matches(row, terms)) continue;
      if (found >= lo && found < lo + PS) out.push(row);
      found++;
      if (found > lo + PS) return { rows: out, total: found, complete: false };
    }
    return { rows: out, total: found, complete: true };
  }

  // ------------------------------------------------------------------ api source
  async function apiQuery(st) {
    const u = new URLSearchParams({ q: st.q, sort: st.sort, dir: st.desc ? "desc" : "asc", page: String(st.page) });
    const r = await fetch("api/latents?" + u.toString());
    if (!r.ok) throw new Error(await r.text());
    const j = await r.json();
    return { rows: j.rows, total: j.total, complete: true };
  }

  // ------------------------------------------------------------------ rendering
  function sortIndex(key) {
    const i = META.sorts.findIndex((s) => s.key === key);
    return i < 0 ? 0 : i;
  }

  function fmt(x) {
    if (x === null || x === undefined) return "\u2013";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-4 || a >= 1e6)) return x.toExponential(3);
    return String(Number(x.toPrecision(4)));
  }

  function href(latent) {
    return "latents/" + String(Math.floor(latent / 1000)).padStart(3, "0") + "/" + latent + ".html";
  }

  function td(tr, text, cls) {
    const el = document.createElement("td");
    el.textContent = text;
    if (cls) el.className = cls;
    tr.appendChild(el);
    return el;
  }

  function renderRow(row) {
    const tr = document.createElement("tr");
    const a = document.createElement("a");
    a.href = href(row[F.latent]);
    a.textContent = row[F.latent];
    td(tr, "").appendChild(a);
    td(tr, row[F.key], "key");
    const lab = td(tr, row[F.label] || "\u2013", "lab");
    if (row[F.search_label] && row[F.search_label] !== row[F.label]) {
      const sl = document.createElement("span");
      sl.className = "slab";
      sl.textContent = "search: " + row[F.search_label];
      lab.appendChild(sl);
    }
    td(tr, row[F.confidence]);
    td(tr, fmt(row[F.density]), "num");
    td(tr, row[F.count].toLocaleString("en-US"), "num");
    td(tr, fmt(row[F.max_act]), "num");
    for (const v of row[F.scores]) td(tr, fmt(v), "num");
    return tr;
  }

  async function run() {
    const my = ++seq;
    const st = Object.assign({}, state);
    status.textContent = "loading\u2026";
    let res;
    try {
      res = await (META.mode === "api" ? apiQuery(st) : staticQuery(st));
    } catch (e) {
      if (my === seq) status.textContent = "error: " + e.message;
      return;
    }
    if (my !== seq) return;
    tbody.replaceChildren(...res.rows.map(renderRow));
    const pages = Math.max(1, Math.ceil(res.total / META.page_size));
    const what = st.q ? "matches" : "latents";
    status.textContent = res.complete ? res.total.toLocaleString("en-US") + " " + what : res.total.toLocaleString("en-US") + "+ " + what;
    pageinfo.textContent = "page " + (st.page + 1) + (res.complete ? " of " + pages : "");
    prev.disabled = st.page === 0;
    next.disabled = res.complete && st.page + 1 >= pages;
    for (const th of table.querySelectorAll("th[data-sort]")) {
      th.classList.toggle("sorted-asc", th.dataset.sort === st.sort && !st.desc);
      th.classList.toggle("sorted-desc", th.dataset.sort === st.sort && st.desc);
    }
    table.dataset.rendered = JSON.stringify([st.q, st.sort, st.desc, st.page]);
  }

  // ------------------------------------------------------------------ state <-> URL hash
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    state.q = h.get("q") || "";
    state.sort = META.sorts.some((s) => s.key === h.get("sort")) ? h.get("sort") : "latent";
    state.desc = h.get("dir") === "desc";
    state.page = Math.max(0, parseInt(h.get("page") || "0", 10) || 0);
    if (search.value !== state.q) search.value = state.q;
  }

  function writeHash() {
    const h = new URLSearchParams({ q: state.q, sort: state.sort, dir: state.desc ? "desc" : "asc", page: String(state.page) });
    if (location.hash.slice(1) !== h.toString()) location.hash = h.toString();
    else run();
  }

  let timer = 0;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = search.value.trim(); state.page = 0; writeHash(); }, 150);
  });
  prev.addEventListener("click", () => { if (state.page > 0) { state.page--; writeHash(); } });
  next.addEventListener("click", () => { state.page++; writeHash(); });
  for (const th of table.querySelectorAll("th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      if (key === state.sort) state.desc = !state.desc;
      else { state.sort = key; state.desc = key !== "latent"; }
      state.page = 0;
      writeHash();
    });
  }
  window.addEventListener("hashchange", () => { readHash(); run(); });
  readHash();
  run();
})();
