// Try your own text (engine.serve only): POST api/live runs the run's model and dictionary on the text.
//   latent page (#live[data-latent]): that latent's activation on every token, shaded like the examples
//   index page: the latents that fire most on the text, linked to their pages
// The static report has no server: GET api/live fails, the form stays hidden and #live-off says
// it needs engine.serve. Everything the server returns is rendered with textContent only.
(function () {
  "use strict";
  const box = document.getElementById("live");
  if (!box) return;
  const api = new URL("../api/live", document.currentScript.src).href;
  const root = new URL("../", document.currentScript.src).href;
  const form = document.getElementById("live-form");
  const text = document.getElementById("live-text");
  const status = document.getElementById("live-status");
  const out = document.getElementById("live-tokens");
  const top = document.getElementById("live-top");
  const latent = box.dataset.latent === undefined ? null : Number(box.dataset.latent);
  const VISIBLE = { "\n": "\u21b5", "\r": "\u240d", "\t": "\u21e5" };

  function visible(tok) { return tok === "" ? "\u2205" : tok.replace(/[\n\r\t]/g, (ch) => VISIBLE[ch]); }
  function fmt(x) { return String(Number(x.toPrecision(4))); }
  function href(lat) { return root + "latents/" + String(Math.floor(lat / 1000)).padStart(3, "0") + "/" + lat + ".html"; }

  function showTokens(tokens, acts) {
    const scale = Math.max(Number(box.dataset.max) || 0, ...acts);
    const line = document.createElement("div");
    line.className = "ex live-line";
    tokens.forEach((tok, i) => {
      const s = document.createElement("span");
      s.textContent = visible(tok);
      s.title = fmt(acts[i]);
      if (acts[i] > 0 && scale > 0) s.className = "a" + Math.min(9, Math.floor((9 * acts[i]) / scale) + 1);
      line.appendChild(s);
    });
    out.replaceChildren(line);
  }

  function showTop(res) {
    const rows = res.top.map(([lat, key, v, at, label]) => {
      const tr = document.createElement("tr");
      const a = document.createElement("a");
      a.href = href(lat);
      a.textContent = lat;
      const cells = [a, key, label || "\u2013", fmt(v), at + ": " + visible(res.tokens[at])];
      for (const c of cells) {
        const td = document.createElement("td");
        if (c instanceof Node) td.appendChild(c); else td.textContent = c;
        tr.appendChild(td);
      }
      return tr;
    });
    top.querySelector("tbody").replaceChildren(...rows);
    top.hidden = false;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    status.textContent = "running\u2026";
    try {
      const r = await fetch(api, { method: "POST", headers: { "Content-Type": "application/json" },
                                   body: JSON.stringify({ text: text.value, latent: latent }) });
      if (!r.ok) throw new Error(await r.text());
      const res = await r.json();
      if (latent !== null) {
        showTokens(res.tokens, res.activations);
        const peak = Math.max(0, ...res.activations);
        status.textContent = res.tokens.length + " tokens, max activation " + fmt(peak);
      } else {
        showTokens(res.tokens, res.tokens.map(() => 0));
        showTop(res);
        status.textContent = res.tokens.length + " tokens, " + res.top.length + " latents fire";
      }
      box.dataset.done = String(Number(box.dataset.done || 0) + 1);
    } catch (e) {
      status.textContent = "error: " + e.message;
    }
  });

  fetch(api).then((r) => (r.ok ? r.json() : null)).then((info) => {
    if (!info || !info.live) return;
    text.maxLength = info.max_chars;
    form.hidden = false;
    document.getElementById("live-off").hidden = true;
    box.dataset.ready = "1";
  }).catch(() => {});
})();
