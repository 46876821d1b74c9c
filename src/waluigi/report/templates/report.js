(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("waluigi-data").textContent);
  const runs = D.runs, rows = D.samples;
  const PAGE = 50;
  let page = 0, shown = rows;
  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fill(id, values) {
    const sel = $(id);
    const uniq = Array.from(new Set(values.filter((v) => v !== null && v !== undefined && v !== "")));
    uniq.sort((a, b) => (isFinite(a) && isFinite(b)) ? a - b : String(a).localeCompare(String(b)));
    for (const v of uniq) { const o = el("option", "", v); o.value = String(v); sel.appendChild(o); }
    if (uniq.length < 2) sel.parentElement.style.display = uniq.length ? "" : "none";
  }
  fill("f-question", rows.map((r) => r.q));
  fill("f-class", rows.map((r) => r.c));
  fill("f-condition", runs.flatMap((r) => r.conditions || [r.condition]));
  fill("f-dose", runs.map((r) => r.dose));
  fill("f-seed", runs.map((r) => r.seed));
  function fmt(v) { return (v === null || v === undefined) ? "n/a" : (typeof v === "number" ? (Math.round(v * 10) / 10).toString() : String(v)); }
  function apply() {
    const q = $("f-question").value, c = $("f-class").value, cond = $("f-condition").value;
    const dose = $("f-dose").value, seed = $("f-seed").value, text = $("f-search").value.toLowerCase();
    shown = rows.filter((r) => {
      const run = runs[r.r];
      if (q && r.q !== q) return false;
      if (c && r.c !== c) return false;
      if (cond && (run.conditions || [run.condition]).indexOf(cond) < 0) return false;
      if (dose && String(run.dose) !== dose) return false;
      if (seed && String(run.seed) !== seed) return false;
      if (text && (r.a + "\n" + r.p + "\n" + r.s).toLowerCase().indexOf(text) < 0) return false;
      return true;
    });
    page = 0;
    draw();
  }
  function draw() {
    const list = $("samples");
    list.replaceChildren();
    const start = page * PAGE, end = Math.min(shown.length, start + PAGE);
    $("count").textContent = shown.length + " of " + rows.length + " answers" +
      (shown.length ? " (showing " + (start + 1) + "-" + end + ")" : "");
    $("prev").disabled = page === 0;
    $("next").disabled = end >= shown.length;
    for (const r of shown.slice(start, end)) {
      const run = runs[r.r];
      const card = el("div", "sample");
      card.dataset.cls = r.c;
      const meta = el("div", "meta");
      meta.appendChild(el("span", "badge b-" + r.c, r.c));
      meta.appendChild(el("span", "qid", r.q + " #" + r.k));
      for (const [name, value] of Object.entries(r.sc)) {
        const mass = r.m[name];
        meta.appendChild(el("span", "score", name + " " + fmt(value) + (mass === undefined ? "" : " (number mass " + fmt(mass * 100) + "%)")));
      }
      meta.appendChild(el("span", "run", run.condition + (run.dose !== null ? " · dose " + run.dose : "") +
        (run.seed !== null ? " · seed " + run.seed : "")));
      meta.appendChild(el("span", "path", run.name));
      card.appendChild(meta);
      if (r.s) { card.appendChild(el("div", "label", "system")); card.appendChild(el("div", "text system", r.s)); }
      card.appendChild(el("div", "label", "question"));
      card.appendChild(el("div", "text question", r.p));
      card.appendChild(el("div", "label", "answer"));
      card.appendChild(el("div", "text answer", r.a));
      list.appendChild(card);
    }
  }
  for (const id of ["f-question", "f-class", "f-condition", "f-dose", "f-seed"]) $(id).addEventListener("change", apply);
  $("f-search").addEventListener("input", apply);
  $("prev").addEventListener("click", () => { page = Math.max(0, page - 1); draw(); });
  $("next").addEventListener("click", () => { page += 1; draw(); });
  apply();
  document.body.dataset.ready = "1";
})();
