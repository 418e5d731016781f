"""The upload page of ``vsearch serve``: one self-contained HTML document.

Inline CSS and JavaScript, no CDN, no web fonts, so it works on a machine without internet.
The page posts the photo to ``/api/search`` and builds the result grid with DOM calls
(``textContent``, never ``innerHTML`` with data), so catalog titles cannot inject markup.
Each card is a product: its ``title`` attribute (else its id), the photo that matched, its
price and brand when it has them.

Filter controls are built from the catalog's attributes (:func:`filter_facets`, passed in
the page's config): checkboxes for a text attribute with few values, min/max for a number,
any/yes/no for a bool. Their choices go out as the ``filter`` JSON field, and a change
searches again.

Once a photo is chosen, dragging on it (mouse, pen or finger: pointer events) draws a box;
on release the search runs again on that part of the photo (``box=x0,y0,x1,y1``, fractions
of the photo as shown, which browsers show upright like the server reads it). The box stays
drawn on the photo until it is cleared or another photo is chosen. When the answer carries
a ``match`` verdict (``exact`` / ``similar`` / ``none`` with a ``confidence``: how likely
the first match is the very item), a banner says so; without one, nothing is shown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

PLACEHOLDER = "__VSEARCH_CONFIG__"
MAX_FACET_VALUES = 30  # a text attribute with more values gets no control

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vsearch: visual search</title>
<style>
  :root { --ink: #1d2433; --muted: #667085; --line: #e4e7ec; --bg: #f6f7f9; --card: #fff;
          --accent: #3b5bdb; --accent-soft: #edf1ff; --bad: #b42318; --bad-soft: #fef3f2; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         color: var(--ink); background: var(--bg); }
  header { background: var(--card); border-bottom: 1px solid var(--line); padding: 14px 28px;
           display: flex; align-items: baseline; gap: 14px; }
  header h1 { margin: 0; font-size: 20px; letter-spacing: -0.01em; }
  header span { color: var(--muted); font-size: 14px; }
  main { display: grid; grid-template-columns: 300px 1fr; gap: 24px; padding: 24px 28px;
         max-width: 1400px; margin: 0 auto; }
  @media (max-width: 760px) { main { grid-template-columns: 1fr; } }
  .panel { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 16px; }
  #drop { border: 2px dashed #c5cbd6; border-radius: 10px; min-height: 220px; display: flex;
          flex-direction: column; align-items: center; justify-content: center; text-align: center;
          color: var(--muted); cursor: pointer; padding: 12px; transition: border-color .15s, background .15s; }
  #drop.over { border-color: var(--accent); background: var(--accent-soft); }
  [hidden] { display: none !important; }
  #stage { position: relative; display: none; line-height: 0; overflow: hidden; border-radius: 6px;
           cursor: crosshair; touch-action: none; user-select: none; -webkit-user-select: none; }
  #stage img { max-width: 100%; max-height: 260px; display: block; -webkit-user-drag: none; }
  #drop.has-photo #stage { display: inline-block; }
  #drop.has-photo .hint { display: none; }
  #box { position: absolute; border: 2px solid #fff; outline: 2px solid var(--accent); pointer-events: none;
         box-shadow: 0 0 0 9999px rgba(29, 36, 51, .45); }
  .boxbar { display: flex; flex-wrap: wrap; column-gap: 16px; row-gap: 2px; margin-top: 8px; font-size: 13px;
            color: var(--muted); }
  #boxnote { flex: 1 1 100%; }
  button.link { width: auto; margin: 0; padding: 0; background: none; color: var(--accent); font-weight: 600;
                font-size: 13px; white-space: nowrap; }
  #drop .hint strong { color: var(--accent); }
  #file { display: none; }
  .controls { display: grid; grid-template-columns: minmax(0, 2fr) minmax(0, 3fr); gap: 12px; margin-top: 14px; }
  label { font-size: 13px; color: var(--muted); display: flex; flex-direction: column; gap: 4px; }
  select, input[type=number] { font: inherit; padding: 6px 8px; border: 1px solid var(--line); width: 100%;
                               border-radius: 8px; background: #fff; color: var(--ink); }
  button { margin-top: 14px; width: 100%; font: inherit; font-weight: 600; padding: 9px; border: 0;
           border-radius: 8px; background: var(--accent); color: #fff; cursor: pointer; }
  button:disabled { background: #a4b4f0; cursor: default; }
  .note { font-size: 12px; color: var(--muted); margin: 10px 0 0; }
  #status { min-height: 22px; color: var(--muted); margin: 0 0 12px; }
  #status b { color: var(--ink); }
  #error { display: none; border: 1px solid #fecdca; background: var(--bad-soft); color: var(--bad);
           border-radius: 10px; padding: 10px 14px; margin-bottom: 14px; }
  #error.shown { display: block; }
  .verdict { display: flex; align-items: baseline; gap: 12px; border-radius: 10px; padding: 10px 14px;
             margin-bottom: 14px; border: 1px solid; }
  .verdict strong { font-size: 17px; }
  .verdict span { font-size: 13px; }
  .verdict.exact { background: #ecfdf3; border-color: #abefc6; color: #067647; }
  .verdict.similar { background: var(--accent-soft); border-color: #c7d2fe; color: var(--accent); }
  .verdict.none { background: #f2f4f7; border-color: var(--line); color: #344054; }
  #results { list-style: none; margin: 0; padding: 0; display: grid; gap: 14px;
             grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; overflow: hidden; }
  .card .thumb { aspect-ratio: 1 / 1; background: #f0f2f5; display: flex; align-items: center;
                 justify-content: center; position: relative; }
  .card .thumb img { width: 100%; height: 100%; object-fit: contain; }
  .card .rank { position: absolute; top: 8px; left: 8px; background: rgba(29,36,51,.8); color: #fff;
                font-size: 12px; font-weight: 600; border-radius: 999px; padding: 1px 8px; }
  .card .body { padding: 9px 11px 11px; }
  .card .title { font-weight: 600; font-size: 14px; white-space: nowrap; overflow: hidden;
                 text-overflow: ellipsis; }
  .card .title.id { font: 12px/20px ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--muted); }
  .card .meta { display: flex; justify-content: space-between; align-items: center; margin-top: 6px;
                font-size: 13px; color: var(--muted); }
  .badge { background: var(--accent-soft); color: var(--accent); border-radius: 999px; padding: 1px 9px;
           font-size: 12px; font-weight: 600; }
  .bar { height: 4px; background: var(--line); border-radius: 2px; margin-top: 8px; overflow: hidden; }
  .bar i { display: block; height: 100%; background: var(--accent); }
  .card a { display: inline-block; margin-top: 6px; font-size: 13px; color: var(--accent); }
  .empty { color: var(--muted); text-align: center; padding: 60px 0; }
  #filters { margin-top: 14px; display: flex; flex-direction: column; gap: 10px; }
  #filters:empty { display: none; }
  .facet { border: 1px solid var(--line); border-radius: 8px; padding: 6px 10px 8px; margin: 0; min-width: 0; }
  .facet legend { font-size: 13px; color: var(--muted); padding: 0 4px; }
  .facet .choices { display: flex; flex-wrap: wrap; gap: 2px 12px; max-height: 140px; overflow-y: auto; }
  .facet label.choice { flex-direction: row; align-items: center; gap: 5px; color: var(--ink); font-size: 14px; }
  .facet .range { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
  .card .facts { display: flex; gap: 8px; margin-top: 3px; font-size: 13px; color: var(--muted); min-height: 19px; }
  .card .price { color: var(--ink); font-weight: 600; }
</style>
</head>
<body>
<header><h1 id="title"></h1><span id="subtitle"></span></header>
<main>
  <section class="panel" aria-label="query photo">
    <div id="drop" tabindex="0" role="button" aria-label="choose or drop a photo">
      <div id="stage"><img id="preview" alt="your photo" draggable="false"><div id="box" hidden></div></div>
      <div class="hint"><strong>Choose a photo</strong><br>or drag and drop it here</div>
    </div>
    <div class="boxbar" id="boxbar" hidden>
      <span id="boxnote"></span>
      <button id="clearbox" class="link" type="button" hidden>Whole photo</button>
      <button id="another" class="link" type="button">Another photo</button>
    </div>
    <input id="file" type="file" accept="image/*">
    <div class="controls">
      <label>Results <input id="k" type="number" min="1"></label>
      <label>Category <select id="category"></select></label>
    </div>
    <div id="filters" aria-label="filters"></div>
    <button id="go" disabled>Search</button>
    <p class="note" id="limits"></p>
  </section>
  <section aria-label="results">
    <div id="error" role="alert"></div>
    <div id="verdict" class="verdict" role="status" hidden></div>
    <p id="status">Upload a photo to find matching products.</p>
    <ol id="results"></ol>
  </section>
</main>
<script id="config" type="application/json">__VSEARCH_CONFIG__</script>
<script>
"use strict";
const cfg = JSON.parse(document.getElementById("config").textContent);
const $ = (id) => document.getElementById(id);
const drop = $("drop"), fileInput = $("file"), kInput = $("k"), catSelect = $("category");
const stage = $("stage"), preview = $("preview");
const VERDICTS = {exact: "This is it", similar: "Similar items", none: "We could not find this item"};
const MIN_BOX_PX = 8;  // a shorter drag is a click, not a box
let photo = null, box = null, busy = false, again = false, drag = null;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setup() {
  document.title = cfg.title + ": visual search";
  $("title").textContent = cfg.title;
  $("subtitle").textContent = "find it in the catalog: " + cfg.items.toLocaleString() + " products";
  kInput.max = cfg.max_k; kInput.value = cfg.default_k;
  const modes = [["auto", "auto: favour the likely one"], ["any", "any"]];
  for (const [value, text] of modes.concat(cfg.categories.map((c) => [c, c]))) {
    const opt = el("option", "", text); opt.value = value; catSelect.append(opt);
  }
  $("filters").replaceChildren(...(cfg.attributes || []).map(facet));
  $("limits").textContent = "JPEG, PNG, GIF or BMP, up to " + sizeText(cfg.max_upload_bytes) + ".";
}

// ---- filters: one control per attribute; read back as the API's filter JSON

function facet(a) {
  const box = el("fieldset", "facet"); box.dataset.name = a.name; box.dataset.type = a.type;
  box.append(el("legend", "", a.name));
  if (a.type === "bool") {
    const select = el("select"); select.setAttribute("aria-label", a.name);
    for (const [value, text] of [["", "any"], ["true", "yes"], ["false", "no"]]) {
      const opt = el("option", "", text); opt.value = value; select.append(opt);
    }
    box.append(select);
  } else if (a.type === "int" || a.type === "float") {
    const range = el("div", "range");
    for (const [op, text, bound] of [["gte", "min", a.min], ["lte", "max", a.max]]) {
      const input = el("input"); input.type = "number"; input.step = "any"; input.dataset.op = op;
      input.placeholder = text + (bound === undefined || bound === null ? "" : " " + bound);
      input.setAttribute("aria-label", a.name + " " + text);
      range.append(input);
    }
    box.append(range);
  } else {
    const choices = el("div", "choices");
    for (const value of a.values || []) {
      const label = el("label", "choice"), check = el("input");
      check.type = "checkbox"; check.value = value;
      label.append(check, document.createTextNode(value));
      choices.append(label);
    }
    box.append(choices);
  }
  box.addEventListener("change", search);
  return box;
}

function currentFilter() {
  const out = {};
  for (const box of $("filters").querySelectorAll(".facet")) {
    const name = box.dataset.name, type = box.dataset.type;
    if (type === "bool") {
      const value = box.querySelector("select").value;
      if (value) out[name] = value === "true";
    } else if (type === "int" || type === "float") {
      const range = {};
      for (const input of box.querySelectorAll("input")) {
        if (input.value !== "" && isFinite(Number(input.value))) range[input.dataset.op] = Number(input.value);
      }
      if (Object.keys(range).length) out[name] = range;
    } else {
      const values = [...box.querySelectorAll("input:checked")].map((c) => c.value);
      if (values.length) out[name] = values;
    }
  }
  return out;
}

function sizeText(n) { return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : n + " bytes"; }

function showError(message) {
  $("error").textContent = message;
  $("error").classList.toggle("shown", Boolean(message));
}

function choose(file) {
  if (!file) return;
  photo = file;
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  drop.classList.add("has-photo");
  $("boxbar").hidden = false;
  $("go").disabled = false;
  setBox(null);
  search();
}

// ---- a box on the photo: fractions 0..1 of the photo as shown [x0, y0, x1, y1]

function setBox(value) {
  box = value;
  drawBox(box);
  $("clearbox").hidden = !box;
  $("boxnote").textContent = box ? "Searching the part in the box." : "Drag on the photo to search a part of it.";
}

function drawBox(b) {
  const shown = $("box");
  shown.hidden = !b;
  if (!b) return;
  shown.style.left = 100 * b[0] + "%"; shown.style.top = 100 * b[1] + "%";
  shown.style.width = 100 * (b[2] - b[0]) + "%"; shown.style.height = 100 * (b[3] - b[1]) + "%";
}

function pointAt(e) {
  const r = preview.getBoundingClientRect();
  const clamp = (v) => Math.min(1, Math.max(0, v));
  return [clamp((e.clientX - r.left) / r.width), clamp((e.clientY - r.top) / r.height)];
}

function spanning(a, b) {
  const round = (v) => Math.round(v * 10000) / 10000;
  return [round(Math.min(a[0], b[0])), round(Math.min(a[1], b[1])),
          round(Math.max(a[0], b[0])), round(Math.max(a[1], b[1]))];
}

stage.addEventListener("pointerdown", (e) => {
  if (!photo || drag || (e.pointerType === "mouse" && e.button !== 0)) return;
  e.preventDefault();
  stage.setPointerCapture(e.pointerId);
  drag = {id: e.pointerId, from: pointAt(e)};
});
stage.addEventListener("pointermove", (e) => {
  if (drag && e.pointerId === drag.id) drawBox(spanning(drag.from, pointAt(e)));
});
function endDrag(e) {
  if (!drag || e.pointerId !== drag.id) return;
  const drawn = spanning(drag.from, pointAt(e)), r = preview.getBoundingClientRect();
  drag = null;
  const big = (drawn[2] - drawn[0]) * r.width >= MIN_BOX_PX && (drawn[3] - drawn[1]) * r.height >= MIN_BOX_PX;
  if (e.type !== "pointerup" || !big) { drawBox(box); return; }  // cancelled, or a click: keep the box
  setBox(drawn);
  search();
}
stage.addEventListener("pointerup", endDrag);
stage.addEventListener("pointercancel", endDrag);
stage.addEventListener("click", (e) => e.stopPropagation());  // the photo draws boxes; it does not reopen the chooser

// ---- searching

async function search() {
  if (!photo) return;
  if (busy) { again = true; return; }  // searched again with the latest choices once this one is back
  showError("");
  if (photo.size > cfg.max_upload_bytes) {
    showError(photo.name + ": " + sizeText(photo.size) + " is over the " + sizeText(cfg.max_upload_bytes) + " limit");
    return;
  }
  const body = new FormData();
  body.append("file", photo, photo.name);
  body.append("k", kInput.value || cfg.default_k);
  body.append("category", catSelect.value);
  if (box) body.append("box", box.join(","));
  const filter = currentFilter();
  if (Object.keys(filter).length) body.append("filter", JSON.stringify(filter));
  busy = true; $("go").disabled = true; $("status").textContent = "Searching\u2026";
  try {
    const response = await fetch("/api/search", {method: "POST", body});
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
    render(data);
  } catch (err) {
    $("status").textContent = "";
    $("results").replaceChildren();
    showVerdict(null);
    showError(String(err.message || err));
  } finally {
    busy = false; $("go").disabled = !photo;
    if (again) { again = false; search(); }
  }
}

// The answer's calibrated verdict, when the catalog is calibrated; its confidence is the
// probability that the first match is the very item in the photo, whatever the verdict.
function showVerdict(match) {
  const banner = $("verdict");
  if (!match || !Object.prototype.hasOwnProperty.call(VERDICTS, match.verdict)) {
    banner.hidden = true; banner.replaceChildren(); return;
  }
  banner.className = "verdict " + match.verdict;
  banner.replaceChildren(el("strong", "", VERDICTS[match.verdict]));
  if (typeof match.confidence === "number" && isFinite(match.confidence)) {
    banner.append(el("span", "", Math.round(100 * match.confidence) + "% likely that #1 is the very item"));
  }
  banner.hidden = false;
}

function render(data) {
  showVerdict(data.match);
  const info = data.category || {};
  const status = $("status");
  status.replaceChildren(el("b", "", data.matches.length + (data.matches.length === 1 ? " product" : " products")),
                         document.createTextNode(" in " + Math.round(data.elapsed_ms) + " ms"));
  if (info.predicted) {
    const how = info.mode === "auto"
      ? " \u00b7 looks like " + info.predicted + " (" + Math.round(100 * info.confidence) + "%"
        + (info.applied ? ", favoured)" : ")")
      : " \u00b7 only " + info.predicted;
    status.append(document.createTextNode(how));
  }
  if (data.box) status.append(document.createTextNode(" \u00b7 in the box"));
  if (data.filter && Object.keys(data.filter).length) status.append(document.createTextNode(" \u00b7 filtered"));
  const cards = data.matches.map((m) => {
    const attrs = m.attributes || {}, product = m.product_id || m.id;
    const title = typeof attrs.title === "string" && attrs.title ? attrs.title : "";
    const card = el("li", "card"); card.dataset.product = product;
    const thumb = el("div", "thumb");
    const img = el("img"); img.src = m.image_url; img.alt = title || product; img.loading = "lazy";
    thumb.append(img, el("span", "rank", "#" + m.rank));
    const body = el("div", "body");
    // without a title, the product's id names it
    body.append(title ? el("div", "title", title) : el("div", "title id", product));
    body.lastChild.title = title || product;
    const facts = el("div", "facts");
    if (typeof attrs.price === "number") facts.append(el("span", "price", priceText(attrs.price)));
    if (typeof attrs.brand === "string" && attrs.brand) facts.append(el("span", "brand", attrs.brand));
    body.append(facts);
    const meta = el("div", "meta");
    meta.append(el("span", "badge", m.category || "\u2014"), el("span", "score", m.score.toFixed(3)));
    const bar = el("div", "bar"), fill = el("i");
    fill.style.width = Math.max(0, Math.min(1, m.score)) * 100 + "%";
    bar.append(fill);
    body.append(meta, bar);
    const url = attrs.url || m.url;
    if (typeof url === "string" && /^https?:\/\//i.test(url)) {
      const link = el("a", "", "view product"); link.href = url; link.rel = "noopener"; body.append(link);
    }
    card.append(thumb, body);
    return card;
  });
  $("results").replaceChildren(...cards);
  if (!cards.length) $("results").replaceChildren(el("li", "empty", "No matching products."));
}

function priceText(n) { return n.toLocaleString(undefined, {minimumFractionDigits: 2, maximumFractionDigits: 2}); }

drop.addEventListener("click", () => fileInput.click());
$("another").addEventListener("click", () => fileInput.click());
$("clearbox").addEventListener("click", () => { setBox(null); search(); });
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") fileInput.click(); });
fileInput.addEventListener("change", () => { choose(fileInput.files[0]); fileInput.value = ""; });
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
}
drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));
$("go").addEventListener("click", search);
kInput.addEventListener("change", search);
catSelect.addEventListener("change", search);
setup();
</script>
</body>
</html>
"""


def filter_facets(products: Iterable, schema: Mapping[str, str], max_values: int = MAX_FACET_VALUES) -> list[dict]:
    """The page's filter controls: per attribute of ``schema``, ``{"name", "type"}`` and

    * text: ``values`` (sorted) when the products hold at most ``max_values`` of them and they
      are not one per product (titles, URLs name a product; they filter nothing), else no control;
    * int / float: ``min`` and ``max`` of the values present (hints for the inputs);
    * bool: nothing more (any / yes / no).

    ``products``: :class:`vsearch.stores.Product` s (each read once).
    """
    texts: dict[str, dict[str, int]] = {n: {} for n, kind in schema.items() if kind == "text"}
    numbers: dict[str, list[float]] = {n: [] for n, kind in schema.items() if kind in ("int", "float")}
    for product in products:
        for name, value in product.attributes.items():
            if value is None:
                continue
            if name in texts and isinstance(value, str) and len(texts[name]) <= max_values:
                texts[name][value] = texts[name].get(value, 0) + 1
            elif (
                name in numbers
                and isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                numbers[name].append(value)
    out = []
    for name, kind in schema.items():
        facet = {"name": name, "type": kind}
        if kind == "text":
            counts = texts[name]
            one_each = len(counts) > 5 and all(n == 1 for n in counts.values())
            if not counts or len(counts) > max_values or one_each:
                continue
            facet["values"] = sorted(counts)
        elif kind in ("int", "float") and numbers[name]:
            facet.update(min=min(numbers[name]), max=max(numbers[name]))
        out.append(facet)
    return out


def render_page(config: dict) -> str:
    """The page with ``config`` (title, categories, limits, catalog size, ``attributes``: the
    :func:`filter_facets`) embedded as JSON.

    ``<``, ``>`` and ``&`` are escaped in the JSON so a category name cannot close the
    script element.
    """
    data = json.dumps(config).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return PAGE.replace(PLACEHOLDER, data)
