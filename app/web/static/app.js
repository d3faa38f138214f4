// Sagashi's web gallery: search with autocomplete, infinite scroll, image pages (with
// previous/next by keyboard), similar search (by an indexed image, a chosen, pasted or
// dropped file, or a URL) and per-group thresholds. Plain ES modules, no build step; every
// piece of data is put in the page with textContent, never as HTML.

// The server's default threshold per group (SAGASHI_THRESHOLD_*), read at start.
const DEFAULTS = {};
const URL_KEYS = { general: "tg", character: "tc", copyright: "tp", rating: "tr" };
const GROUP_ORDER = ["copyright", "character", "general", "rating"];
const PAGE = 60;

const $ = (selector) => document.querySelector(selector);
// upload: the query image of a reverse search, { file } or { url }, with a name to show.
// ids: the results loaded so far, in order (the image page's previous and next).
const state = { cursor: null, loading: false, upload: null, generation: 0, ids: [], count: 0, returnTo: null };
const FEATURES = { urlFetch: false };

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

// --- URL state ------------------------------------------------------------------------

function params() {
  return new URLSearchParams(location.search);
}

function thresholds() {
  const p = params();
  const found = {};
  for (const [group, key] of Object.entries(URL_KEYS)) {
    const value = parseFloat(p.get(key));
    if (!Number.isNaN(value)) found[group] = value;
  }
  return found;
}

function navigate(changes, replace = false) {
  const p = params();
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === undefined || value === "") p.delete(key);
    else p.set(key, value);
  }
  const url = `${location.pathname}${p.toString() ? "?" + p : ""}`;
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  render();
}

function searchFor(q) {
  state.upload = null;
  navigate({ q, image: null });
}

// --- API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, error) {
    super(error.message);
    this.status = status;
    this.code = error.code;
    this.position = error.position;
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (response.status === 401) {
    // The server wants SAGASHI_READ_TOKEN and the login cookie is missing or stale (the
    // token was changed): log in again, then come back to this page.
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  if (!response.ok) {
    const error = body && body.error ? body.error : { code: "http", message: `HTTP ${response.status}` };
    throw new ApiError(response.status, error);
  }
  return body;
}

function thresholdQuery() {
  const query = new URLSearchParams();
  for (const [group, value] of Object.entries(thresholds())) query.set(`threshold_${group}`, value);
  return query;
}

// --- errors and status ----------------------------------------------------------------

function showError(error, q) {
  const box = $("#error");
  box.replaceChildren();
  box.hidden = false;
  box.append(el("div", { class: "message" }, error.message));
  if (typeof error.position === "number" && q) {
    box.append(el("div", { class: "query" }, q));
    box.append(el("div", { class: "caret" }, " ".repeat(error.position) + "^"));
  }
  box.dataset.code = error.code || "";
}

function clearError() {
  $("#error").hidden = true;
  $("#error").replaceChildren();
}

function setStatus(text) {
  $("#status").textContent = text;
}

// --- notices: an empty index, unknown tags ----------------------------------------------

function replaceTerm(q, unknown, name) {
  // Swaps the unknown tag for a known one, keeping each term's -/~ prefix and threshold.
  return q.split(/(\s+)/).map((token) => {
    const match = token.match(/^([-~]*)([^,]+)(,.*)?$/);
    if (!match || match[2].toLowerCase() !== unknown) return token;
    return `${match[1]}${name}${match[3] || ""}`;
  }).join("");
}

function showNotice(page, q) {
  const box = $("#notice");
  box.replaceChildren();
  if (page.notice) box.append(el("p", { class: "empty-index" }, page.notice));
  for (const unknown of page.suggestions || []) {
    const line = el("p", { class: "unknown-tag", "data-tag": unknown.tag }, "No tag ", el("code", {}, unknown.tag), " in the index");
    if (unknown.suggestions.length) {
      line.append("; did you mean ");
      unknown.suggestions.forEach((s, index) => {
        if (index) line.append(", ");
        const fixed = replaceTerm(q, unknown.tag, s.name);
        const link = el("a", { href: `/?q=${encodeURIComponent(fixed)}`, class: `group-${s.group} suggestion`, title: s.alias ? `alias ${s.alias}` : `${s.count} images` }, s.name);
        link.addEventListener("click", (event) => {
          event.preventDefault();
          searchFor(fixed);
        });
        line.append(link, el("span", { class: "count" }, ` (${s.count.toLocaleString()})`));
      });
      line.append("?");
    } else {
      line.append(": it matches nothing.");
    }
    box.append(line);
  }
  box.hidden = !box.children.length;
}

// --- results grid -----------------------------------------------------------------------

function thumbnail(item) {
  const link = el("a", { class: "thumb", href: `/?image=${item.id}&q=${encodeURIComponent(params().get("q") || "")}`, "data-id": item.id });
  link.addEventListener("click", (event) => {
    event.preventDefault();
    navigate({ image: item.id });
  });
  const title = item.tags.map((t) => t.name).join(" ");
  link.setAttribute("aria-label", `Image ${item.id}${title ? `: ${title}` : ""}`);
  link.append(el("img", { src: `/api/images/${item.id}/thumb`, alt: title, title, loading: "lazy" }));
  if (item.similarity !== null && item.similarity !== undefined) {
    link.append(el("span", { class: "similarity" }, `${(item.similarity * 100).toFixed(1)}%`));
  }
  return link;
}

async function fetchPage(cursor) {
  const q = params().get("q") || "";
  if (state.upload && state.upload.url) {
    const body = { url: state.upload.url, q, k: PAGE };
    if (cursor) body.cursor = cursor;
    return api(`/api/similar?${thresholdQuery()}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }
  if (state.upload) {
    const form = new FormData();
    form.append("file", state.upload.file);
    form.append("q", q);
    form.append("k", String(PAGE));
    if (cursor) form.append("cursor", cursor);
    return api(`/api/similar?${thresholdQuery()}`, { method: "POST", body: form });
  }
  const query = thresholdQuery();
  query.set("q", q);
  query.set("limit", String(PAGE));
  query.set("tags", "12");
  if (cursor) query.set("cursor", cursor);
  return api(`/api/search?${query}`);
}

async function loadMore(reset) {
  if (state.loading || (!reset && !state.cursor)) return;
  const generation = state.generation;
  state.loading = true;
  const q = params().get("q") || "";
  try {
    const page = await fetchPage(reset ? null : state.cursor);
    if (generation !== state.generation) return; // a newer search replaced this one
    if (reset) {
      $("#grid").replaceChildren();
      state.ids = [];
    }
    const onImage = Boolean(params().get("image"));
    if (!onImage) clearError();
    if (reset && !onImage) showNotice(page, q);
    for (const item of page.items) {
      $("#grid").append(thumbnail(item));
      state.ids.push(String(item.id));
    }
    state.cursor = page.next_cursor;
    state.count = page.count;
    const shown = $("#grid").children.length;
    $("#clear-upload").hidden = !state.upload;
    const count = `${page.count.toLocaleString()}${page.estimated ? " (estimated)" : ""}`;
    if (onImage) updatePager();
    else setStatus(state.upload
      ? `Most like ${state.upload.name} first, of ${count} images; ${shown} shown`
      : `${count} images matching; ${shown} shown`);
    if (reset && !onImage) focusReturn();
  } catch (error) {
    if (generation !== state.generation) return;
    if (reset) {
      $("#grid").replaceChildren();
      state.ids = [];
    }
    $("#notice").hidden = true;
    state.cursor = null;
    setStatus("");
    showError(error, q);
  } finally {
    if (generation === state.generation) state.loading = false;
  }
  if (!state.cursor || generation !== state.generation) return;
  if (!params().get("image")) {
    if (sentinelVisible()) loadMore(false);
  } else if (position() < 0 && state.ids.length < PAGE * 10) {
    loadMore(false); // an image page opened from a link: find it among the results
  }
}

function sentinelVisible() {
  const box = $("#sentinel").getBoundingClientRect();
  return box.top < window.innerHeight + 400;
}

// --- image page -----------------------------------------------------------------------

function similarQuery(imageId) {
  // "Find similar" keeps the current filter, without its own similar: or order: terms.
  const filter = (params().get("q") || "")
    .split(/\s+/)
    .filter((term) => term && !/^-?(similar|order):/i.test(term))
    .join(" ");
  // Parenthesised: a filter with a top-level "or" stays one filter, not an "or" with similar:.
  return `similar:${imageId}${filter ? ` (${filter})` : ""}`;
}

async function showImage(imageId) {
  const detail = $("#detail-body");
  detail.replaceChildren();
  updatePager();
  try {
    const image = await api(`/api/images/${imageId}?${thresholdQuery()}`);
    const view = el("div", { class: "view" },
      el("img", { src: `/api/images/${image.id}/file`, alt: image.path }),
      el("div", { class: "meta" }, `${image.width}×${image.height} · ${image.format} · ${(image.size_bytes / 1024).toFixed(0)} KiB · ${image.path}`),
      el("div", { class: "actions" },
        el("button", { type: "button", id: "find-similar", onclick: () => searchFor(similarQuery(image.id)) }, "Find similar"),
        el("a", { href: `/api/images/${image.id}/file`, target: "_blank", rel: "noopener" }, "Open file")));
    detail.append(view, tagPanel(image.tags));
    clearError();
    updatePager();
  } catch (error) {
    showError(error, null);
  }
}

// --- previous, next, back: buttons and keys on the image page -------------------------

function position() {
  return state.ids.indexOf(params().get("image") || "");
}

function updatePager() {
  const index = position();
  $("#prev-image").disabled = index <= 0;
  $("#next-image").disabled = index < 0 || (index === state.ids.length - 1 && !state.cursor);
  if (index >= 0) setStatus(`Result ${index + 1} of ${state.count.toLocaleString()}`);
  else setStatus("");
}

async function step(delta) {
  let index = position();
  if (index < 0) return;
  if (delta > 0 && index === state.ids.length - 1 && state.cursor) {
    await loadMore(false); // the next page of results, then the first of it
    index = position();
  }
  const target = state.ids[index + delta];
  if (target) navigate({ image: target }, true); // Back in the browser goes to the grid
}

function backToGrid() {
  state.returnTo = params().get("image");
  navigate({ image: null });
}

function focusReturn() {
  // Back from an image page: its thumbnail has the focus, in view.
  if (!state.returnTo) return;
  const thumb = $(`#grid .thumb[data-id="${CSS.escape(state.returnTo)}"]`);
  state.returnTo = null;
  if (thumb) {
    thumb.focus({ preventScroll: true });
    thumb.scrollIntoView({ block: "center" });
  }
}

function onPageKey(event) {
  if ($("#detail").hidden || event.altKey || event.ctrlKey || event.metaKey) return;
  const target = event.target;
  if (target instanceof HTMLElement && target.closest("input, textarea, select, [contenteditable]")) return;
  if (event.key === "ArrowLeft") step(-1);
  else if (event.key === "ArrowRight") step(1);
  else if (event.key === "Escape") backToGrid();
  else return;
  event.preventDefault();
}

function tagRow(tag) {
  const link = el("a", { href: `/?q=${encodeURIComponent(tag.name)}`, class: `group-${tag.group} tag-link` }, tag.name);
  link.addEventListener("click", (event) => {
    event.preventDefault();
    $("#q").value = tag.name;
    searchFor(tag.name);
  });
  const bar = el("span", { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": tag.score.toFixed(3), "aria-label": `score of ${tag.name}` },
    el("span", { class: "fill", style: `width: ${(tag.score * 100).toFixed(1)}%` }));
  // The tag rules (app/tagrules): confident through an implying tag, left out of captions.
  const notes = [];
  if (tag.implied_by) {
    notes.push(el("span", { class: "note implied", title: `found through ${tag.implied_by}, which implies it` }, `via ${tag.implied_by}`));
  }
  if (tag.dropped) {
    const why = tag.dropped.rule === "overlap" ? `the more specific ${tag.dropped.by} is kept` : `contradicts ${tag.dropped.by}, which scores higher`;
    notes.push(el("span", { class: "note dropped", title: `left out of captions: ${why}` }, `${tag.dropped.rule}: ${tag.dropped.by}`));
  }
  return el("li", { "data-tag": tag.name, class: tag.dropped ? "dropped" : "" },
    notes.length ? el("span", { class: "name" }, link, ...notes) : link,
    el("span", { class: "count", title: "images with this tag" }, tag.count.toLocaleString()),
    bar,
    el("span", { class: "score" }, tag.score.toFixed(3)));
}

function tagList(tags) {
  // By group, in GROUP_ORDER; tags arrive by score.
  const box = el("div", {});
  for (const group of GROUP_ORDER) {
    const inGroup = tags.filter((t) => t.group === group);
    if (!inGroup.length) continue;
    box.append(el("h3", { class: `group-${group}` }, group));
    const list = el("ul", { "data-group": group });
    for (const tag of inGroup) list.append(tagRow(tag));
    box.append(list);
  }
  return box;
}

function tagPanel(tags) {
  // The tags at the thresholds in force (the sliders), so each one's search finds this
  // image; the rest, down to the storage floor, collapsed under "low confidence".
  const panel = el("aside", { class: "tags" });
  const confident = tags.filter((t) => t.confident);
  const rest = tags.filter((t) => !t.confident);
  panel.append(confident.length ? tagList(confident) : el("p", { class: "none" }, "No tag reaches the thresholds."));
  if (rest.length) {
    const low = el("details", { class: "low-confidence" }, el("summary", {}, `Low confidence (${rest.length})`));
    low.append(tagList(rest));
    panel.append(low);
  }
  return panel;
}

// --- autocomplete -----------------------------------------------------------------------

const complete = { timer: null, items: [], selected: -1, token: null };

function currentToken(input) {
  const caret = input.selectionStart ?? input.value.length;
  const before = input.value.slice(0, caret);
  const start = before.search(/\S*$/);
  let end = input.value.slice(caret).search(/\s|$/);
  end = caret + end;
  const raw = input.value.slice(start, end);
  const prefix = raw.match(/^[-~]*/)[0];
  return { start, end, prefix, text: raw.slice(prefix.length) };
}

function closeSuggestions() {
  $("#suggestions").hidden = true;
  $("#suggestions").replaceChildren();
  $("#q").setAttribute("aria-expanded", "false");
  complete.items = [];
  complete.selected = -1;
}

function suggest() {
  const input = $("#q");
  const token = currentToken(input);
  complete.token = token;
  if (!token.text || token.text.includes(":") || token.text.includes("*")) {
    closeSuggestions();
    return;
  }
  clearTimeout(complete.timer);
  complete.timer = setTimeout(async () => {
    try {
      const items = await api(`/api/tags?prefix=${encodeURIComponent(token.text)}&limit=10`);
      if (complete.token !== token) return;
      showSuggestions(items);
    } catch {
      closeSuggestions();
    }
  }, 100);
}

function showSuggestions(items) {
  const list = $("#suggestions");
  list.replaceChildren();
  complete.items = items;
  complete.selected = -1;
  if (!items.length) {
    closeSuggestions();
    return;
  }
  items.forEach((item, index) => {
    const name = item.alias_of
      ? el("span", {}, el("span", { class: "alias" }, `${item.name} → `), el("span", { class: `group-${item.group}` }, item.alias_of))
      : el("span", { class: `group-${item.group}` }, item.name);
    const row = el("li", { role: "option", "data-tag": item.alias_of || item.name, "aria-selected": "false" },
      name, el("span", { class: "count" }, item.count.toLocaleString()));
    row.addEventListener("mousedown", (event) => {
      event.preventDefault();
      accept(index);
    });
    list.append(row);
  });
  list.hidden = false;
  $("#q").setAttribute("aria-expanded", "true");
}

function highlight(index) {
  const rows = [...$("#suggestions").children];
  complete.selected = (index + rows.length) % rows.length;
  rows.forEach((row, i) => row.setAttribute("aria-selected", String(i === complete.selected)));
}

function accept(index) {
  const item = complete.items[index];
  const input = $("#q");
  const token = complete.token;
  if (!item || !token) return;
  const name = item.alias_of || item.name;
  const replaced = `${token.prefix}${name} `;
  input.value = input.value.slice(0, token.start) + replaced + input.value.slice(token.end).replace(/^\s+/, "");
  const caret = token.start + replaced.length;
  input.setSelectionRange(caret, caret);
  closeSuggestions();
  input.focus();
}

function onKey(event) {
  const open = !$("#suggestions").hidden;
  if (!open) return;
  if (event.key === "ArrowDown") highlight(complete.selected + 1);
  else if (event.key === "ArrowUp") highlight(complete.selected - 1);
  else if ((event.key === "Enter" || event.key === "Tab") && complete.selected >= 0) accept(complete.selected);
  else if (event.key === "Escape") closeSuggestions();
  else return;
  event.preventDefault();
}

// --- thresholds -------------------------------------------------------------------------

function syncSliders() {
  const chosen = thresholds();
  for (const slider of document.querySelectorAll("#thresholds input")) {
    const group = slider.dataset.group;
    slider.value = chosen[group] ?? DEFAULTS[group];
    slider.nextElementSibling.textContent = Number(slider.value).toFixed(2);
  }
}

function onSlider(event) {
  const slider = event.target;
  slider.nextElementSibling.textContent = Number(slider.value).toFixed(2);
  const value = Number(slider.value);
  const key = URL_KEYS[slider.dataset.group];
  navigate({ [key]: value === DEFAULTS[slider.dataset.group] ? null : value.toFixed(2) }, true);
}

// --- drag and drop ----------------------------------------------------------------------

function setUpDrop() {
  let depth = 0;
  const zone = $("#drop-zone");
  const hasFile = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!hasFile(event)) return;
    depth += 1;
    zone.hidden = false;
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.hidden = true;
  });
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    zone.hidden = true;
    const file = event.dataTransfer?.files?.[0];
    if (file) searchByFile(file);
  });
}

function searchByFile(file) {
  state.upload = { file, name: file.name || "the pasted image" };
  navigate({ image: null }, false);
}

function searchByUrl(url) {
  const name = url.split(/[?#]/)[0].split("/").filter(Boolean).pop() || url;
  state.upload = { url, name };
  navigate({ image: null }, false);
}

function setUpImageInput() {
  // The file picker, paste (an image copied anywhere: Ctrl+V / long-press Paste) and, when
  // the server downloads URLs, the URL field: reverse search without drag and drop.
  $("#upload-button").addEventListener("click", () => $("#upload").click());
  $("#upload").addEventListener("change", (event) => {
    const file = event.target.files?.[0];
    if (file) searchByFile(file);
    event.target.value = ""; // the same file chosen again searches again
  });
  document.addEventListener("paste", (event) => {
    const file = [...(event.clipboardData?.files || [])].find((f) => f.type.startsWith("image/"));
    if (!file) return; // text goes where it was pasted
    event.preventDefault();
    searchByFile(file);
  });
  $("#url-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const url = $("#image-url").value.trim();
    if (url) searchByUrl(url);
  });
}

// --- export (an admin job run by sagashi worker) ---------------------------------------

async function adminCall(path, options = {}) {
  // Not api(): a 401 here is a missing admin token, not a reason to log in again.
  const token = sessionStorage.getItem("sagashi-admin-token") || "";
  const headers = { Authorization: `Bearer ${token}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, body && body.error ? body.error : { code: "http", message: `HTTP ${response.status}` });
  }
  return body;
}

function exportText(job) {
  const s = job.summary || {};
  if (job.state === "queued") return "Export queued: waiting for a 'sagashi worker' to run it";
  if (job.state === "running") return `Exporting: ${job.done.toLocaleString()} of ${job.total.toLocaleString()} images`;
  if (job.state === "failed") return `Export failed: ${job.error}`;
  const failed = job.failed ? `, ${job.failed} failed (see job ${job.id})` : "";
  return `Exported ${(s.matched ?? job.total).toLocaleString()} images to ${s.folder}${failed}`;
}

async function startExport(event) {
  event.preventDefault();
  const status = $("#export-status");
  sessionStorage.setItem("sagashi-admin-token", $("#export-token").value.trim());
  const body = { name: $("#export-name").value.trim(), q: params().get("q") || "", images: $("#export-images").value };
  for (const [group, value] of Object.entries(thresholds())) {
    if (group !== "rating") body[`threshold_${group}`] = value;
  }
  try {
    let job = await adminCall("/api/admin/export", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    status.textContent = exportText(job);
    while (job.state === "queued" || job.state === "running") {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      job = await adminCall(`/api/admin/jobs/${job.id}`);
      status.textContent = exportText(job);
    }
  } catch (error) {
    status.textContent = `Export refused: ${error.message}`;
  }
}

// --- page -------------------------------------------------------------------------------

function render() {
  const p = params();
  $("#q").value = p.get("q") || "";
  syncSliders();
  closeSuggestions();
  state.generation += 1;
  const image = p.get("image");
  $("#detail").hidden = !image;
  if (image) $("#notice").hidden = true;
  $("#results").hidden = Boolean(image);
  if (image) {
    state.loading = false; // a page still loading belonged to the grid's generation
    showImage(image);
    $("#detail").focus({ preventScroll: true });
    window.scrollTo(0, 0);
    // Opened from a link: load the results too, for previous and next.
    if (!state.ids.includes(image) && !state.loading) loadMore(true);
    return;
  }
  state.cursor = null;
  state.loading = false;
  loadMore(true);
}

function start() {
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    // With a dropped image on screen the query filters it; otherwise a new search.
    navigate({ q: $("#q").value.trim(), image: null });
  });
  $("#clear-upload").addEventListener("click", () => searchFor(params().get("q") || ""));
  $("#export-open").addEventListener("click", (event) => {
    const form = $("#export-form");
    form.hidden = !form.hidden;
    event.target.setAttribute("aria-expanded", String(!form.hidden));
    $("#export-token").value = sessionStorage.getItem("sagashi-admin-token") || "";
  });
  $("#export-form").addEventListener("submit", startExport);
  $(".brand").addEventListener("click", (event) => {
    event.preventDefault();
    searchFor("");
  });
  $("#q").addEventListener("input", suggest);
  $("#q").addEventListener("keydown", onKey);
  $("#q").addEventListener("blur", () => setTimeout(closeSuggestions, 150));
  $("#toggle-thresholds").addEventListener("click", (event) => {
    const panel = $("#thresholds");
    panel.hidden = !panel.hidden;
    event.target.setAttribute("aria-expanded", String(!panel.hidden));
  });
  for (const slider of document.querySelectorAll("#thresholds input")) slider.addEventListener("change", onSlider);
  $("#reset-thresholds").addEventListener("click", () => navigate({ tg: null, tc: null, tp: null, tr: null }, true));
  new IntersectionObserver((entries) => {
    if (entries.some((entry) => entry.isIntersecting)) loadMore(false);
  }, { rootMargin: "400px" }).observe($("#sentinel"));
  window.addEventListener("popstate", render);
  setUpDrop();
  setUpImageInput();
  $("#prev-image").addEventListener("click", () => step(-1));
  $("#next-image").addEventListener("click", () => step(1));
  $("#back-to-grid").addEventListener("click", backToGrid);
  document.addEventListener("keydown", onPageKey);
  api("/api/defaults")
    .then((defaults) => {
      Object.assign(DEFAULTS, defaults.thresholds);
      FEATURES.urlFetch = Boolean(defaults.url_fetch);
      $("#url-form").hidden = !FEATURES.urlFetch;
    })
    .catch(() => {}) // shown by the search's own error; the sliders then start at 0.5
    .finally(render);
}

start();
