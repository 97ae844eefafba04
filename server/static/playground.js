/* The Brainstacks playground's logic (server/static/playground.html).
 *
 * Everything comes from the server's public API, called like any client does:
 *   GET  /v1/models            compositions (brainstacks, :base, :all, :<domain>) and so the domains
 *   POST /v1/chat/completions  streamed (SSE read through fetch + ReadableStream); every chunk carries the
 *   POST /v1/completions         `brainstacks` extension {"weights", "bundle_version"}, drawn as one bar per domain
 *   GET  /health               bundle version (public)
 *   GET  /admin/stacks         bundle, domains, stacks, router and its min_weight cut (shown only when it answers)
 *   GET  /debug/requests       the recent requests and their weights (shown only when it answers)
 * A 401 makes the page ask for a key; the key lives in sessionStorage (this tab only) and is sent as
 * `Authorization: Bearer <key>` on every call. Server data is only ever inserted as text, never as HTML.
 */
"use strict";

(() => {
  const KEY = "brainstacks.key";
  const ROUTED = "brainstacks";
  const $ = (id) => document.getElementById(id);
  const state = { routed: ROUTED, models: [], domains: [], minWeight: null, single: null, comparing: null };

  // ------------------------------------------------------------------ DOM helpers
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, String(v));
      else node[k] = v;
    }
    for (const c of children) node.append(c);
    return node;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // ------------------------------------------------------------------ API
  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || (status ? `The server answered HTTP ${status}.` : "The server cannot be reached."));
      this.status = status;
      this.code = e.code || null;
    }
  }

  function getKey() {
    return sessionStorage.getItem(KEY);
  }

  function headers(json) {
    const h = {};
    if (json) h["Content-Type"] = "application/json";
    const k = getKey();
    if (k) h.Authorization = "Bearer " + k;
    return h;
  }

  async function call(path, body, signal) {
    let res;
    try {
      res = await fetch(path, {
        method: body === undefined ? "GET" : "POST", headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store", signal,
      });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError(0, null);
    }
    if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
    return res;
  }

  const getJSON = async (path) => (await call(path)).json();

  /** POST a streamed completion; calls on.text(str), on.ext(brainstacks), on.finish(reason), on.usage(usage). */
  async function stream(body, on, signal) {
    const path = body.messages ? "/v1/chat/completions" : "/v1/completions";
    const res = await call(path, body, signal);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          const obj = JSON.parse(data);
          if (obj.error) throw new ApiError(0, obj);
          if (obj.brainstacks) on.ext(obj.brainstacks);
          if (obj.usage) on.usage(obj.usage);
          for (const ch of obj.choices || []) {
            if (ch.index !== 0) continue;
            const text = body.messages ? (ch.delta && ch.delta.content) : ch.text;
            if (text) on.text(text);
            if (ch.finish_reason) on.finish(ch.finish_reason);
          }
        }
      }
    }
  }

  function requestBody(model, prompt, weights) {
    const body = {
      model, stream: true, stream_options: { include_usage: true },
      temperature: Math.max(0, parseFloat($("temperature").value) || 0),
    };
    const maxTokens = parseInt($("max-tokens").value, 10);
    if (maxTokens) body.max_tokens = Math.max(1, maxTokens);  // empty or 0: the server's default (SamplingParams)
    if ($("mode").value === "chat") body.messages = [{ role: "user", content: prompt }];
    else body.prompt = prompt;
    if (weights) body.weights = weights;
    return body;
  }

  // ------------------------------------------------------------------ weights bars
  /** One bar per domain; `routed` draws the router's min_weight cut (when the page knows it). */
  function renderWeights(box, weights, routed) {
    box.replaceChildren();
    box.dataset.state = "set";
    box.dataset.routed = routed ? "true" : "false";
    const cut = routed && state.minWeight !== null ? state.minWeight : null;
    if (cut !== null) box.dataset.minWeight = String(cut);
    else delete box.dataset.minWeight;
    for (const [domain, w] of Object.entries(weights || {})) {
      const track = el("div", { class: "track" }, el("div", { class: "fill" }));
      track.firstChild.style.width = `${Math.max(0, Math.min(1, w)) * 100}%`;
      if (cut !== null) {
        const line = el("div", { class: "cutline", title: `min_weight ${cut}` });
        line.style.left = `${cut * 100}%`;
        track.append(line);
      }
      const skipped = w <= 0;
      const bar = el("div", { class: "bar" + (skipped ? " cut" : ""), "data-domain": domain, "data-weight": w,
                              "data-testid": "weight-bar", title: skipped ? `${domain}: off` : `${domain}: ${w}` },
                     el("span", { class: "name", text: domain }), track,
                     el("span", { class: "num", text: w.toFixed(3) }));
      bar.style.display = "contents";
      box.append(bar);
    }
    if (!box.classList.contains("small")) {
      let legend;
      if (!routed) legend = "fixed by the request (composition or override), not by the router";
      else if (cut !== null) {
        legend = el("span", {}, el("span", { class: "swatch" }),
                    ` min_weight ${cut}: the router's weights at or below it are cut to 0 (that domain is skipped)`);
      } else legend = "the router's weights (a 0 is a domain skipped; the min_weight cut shows with an admin key)";
      box.append(el("div", { class: "legend" }, legend));
    }
  }

  // ------------------------------------------------------------------ loading the page's data
  function setStatus(text) {
    $("server-status").textContent = text;
  }

  function updateKeyStatus() {
    const k = getKey();
    $("key-status").textContent = k ? "key: set (this tab)" : "key: none";
    $("forget-key").hidden = !k;
  }

  function fillSelect(select, ids, preferred, allowNone) {
    const keep = select.value;
    select.replaceChildren();
    if (allowNone) select.append(el("option", { value: "", text: "—" }));
    for (const id of ids) select.append(el("option", { value: id, text: id }));
    select.value = ids.includes(keep) || (allowNone && keep === "" && select.dataset.touched) ? keep : preferred;
  }

  function buildSliders() {
    const box = $("sliders");
    box.replaceChildren();
    for (const d of state.domains) {
      const input = el("input", { type: "range", min: "0", max: "1", step: "0.05", value: "1", id: `slider-${d}`,
                                  "data-testid": `slider-${d}`, "data-domain": d });
      const shown = el("span", { class: "num", text: "1.00" });
      input.addEventListener("input", () => { shown.textContent = Number(input.value).toFixed(2); });
      box.append(el("label", { htmlFor: input.id, text: d }), input, shown);
    }
    syncOverride();
  }

  function syncOverride() {
    const on = $("override").checked;
    $("sliders").classList.toggle("off", !on);
    for (const input of $("sliders").querySelectorAll("input")) input.disabled = !on;
  }

  function overrideWeights() {
    if (!$("override").checked) return null;
    const w = {};
    for (const input of $("sliders").querySelectorAll("input")) w[input.dataset.domain] = Number(input.value);
    return w;
  }

  async function loadHealth() {
    try {
      const h = await getJSON("/health");
      $("bundle-version").textContent = `bundle v${h.bundle_version} · ${h.domains.length} domains`;
    } catch (e) {
      $("bundle-version").textContent = "";
    }
  }

  async function loadAdmin() {
    let b;
    try {
      b = await getJSON("/admin/stacks");
    } catch (e) {  // no working admin key: the admin parts stay hidden
      state.minWeight = null;
      $("bundle").hidden = true;
      return;
    }
    const router = b.router || null;
    state.minWeight = router && typeof router.min_weight === "number" ? router.min_weight : null;
    const dl = el("dl", {});
    const row = (k, v) => dl.append(el("dt", { text: k }), el("dd", { text: v }));
    row("version", String(b.bundle_version));
    row("directory", b.bundle_dir || "(none)");
    row("stacks loaded", String(b.stacks_loaded));
    if (router) {
      row("router", `${router.path} (${(router.domains || []).join(", ")})`);
      if (state.minWeight !== null) row("min_weight", String(state.minWeight));
      if (router.floors && Object.keys(router.floors).length) row("floors", JSON.stringify(router.floors));
    } else row("router", "none (every domain at full weight when routed)");
    const tbody = el("tbody", {});
    for (const d of b.domains || []) {
      for (const s of d.stacks || []) {
        tbody.append(el("tr", { "data-testid": "bundle-stack", "data-domain": d.name },
                        el("td", { text: d.name }), el("td", { class: "mono", text: s.path }),
                        el("td", { text: s.parameters == null ? "" : Number(s.parameters).toLocaleString() }),
                        el("td", { text: s.bytes == null ? "" : `${(s.bytes / 1e6).toFixed(2)} MB` }),
                        el("td", { text: s.dtype || "" }),
                        el("td", { class: "mono", text: (s.sha256 || "").slice(0, 12), title: s.sha256 || "" })));
      }
    }
    const head = el("thead", {}, el("tr", {}, ...["domain", "stack", "parameters", "size", "dtype", "sha256"]
      .map((t) => el("th", { text: t }))));
    $("bundle-body").replaceChildren(dl, el("table", {}, head, tbody));
    $("bundle").hidden = false;
  }

  async function loadRecent() {
    let list;
    try {
      list = await getJSON("/debug/requests");
    } catch (e) {  // /debug needs a key this page does not hold: the section stays hidden
      $("recent").hidden = true;
      return;
    }
    const tbody = $("recent-body");
    tbody.replaceChildren();
    for (const rec of (list.data || []).slice(0, 20)) {
      const bars = el("div", { class: "weights small" });
      renderWeights(bars, rec.weights, rec.routed);
      const u = rec.usage || {};
      const t = rec.timings || {};
      tbody.append(el("tr", { "data-testid": "recent-row", "data-id": rec.id },
                      el("td", { class: "mono", text: rec.id.slice(-10), title: rec.id }),
                      el("td", { class: "mono", text: rec.model + (rec.routed ? "" : " (fixed)"),
                                 title: rec.routed ? "weights chosen by the router" : "weights fixed by the request" }),
                      el("td", {}, bars),
                      el("td", { text: `${u.prompt_tokens}+${u.completion_tokens}` }),
                      el("td", { text: t.e2e_ms == null ? "" : t.e2e_ms.toFixed(0) }),
                      el("td", { text: (rec.finish_reasons || []).join(", ") + (rec.error ? ` (${rec.error})` : "") })));
    }
    $("recent").hidden = false;
  }

  async function init() {
    updateKeyStatus();
    showError("");
    document.body.dataset.ready = "false";
    let models;
    try {
      models = await getJSON("/v1/models");
    } catch (e) {
      if (e.status === 401) {
        setStatus("a key is needed");
        $("auth").hidden = false;
        showError(e.message);
        $("key-input").focus();
      } else if (e.status === 503 || e.status === 0) {
        setStatus(e.status ? "loading the model…" : "cannot reach the server, retrying…");
        setTimeout(init, 1000);
      } else showError(e.message);
      return;
    }
    $("auth").hidden = true;
    showError("");
    state.models = models.data.map((m) => m.id);
    state.routed = state.models.find((id) => !id.includes(":")) || ROUTED;
    const fixed = new Set([`${state.routed}:base`, `${state.routed}:all`]);
    state.domains = state.models.filter((id) => id.startsWith(state.routed + ":") && !fixed.has(id))
      .map((id) => id.slice(state.routed.length + 1));
    fillSelect($("model"), state.models, state.routed, false);
    fillSelect($("compare-model-0"), state.models, state.routed, false);
    fillSelect($("compare-model-1"), state.models, `${state.routed}:base`, false);
    fillSelect($("compare-model-2"), state.models, `${state.routed}:all`, true);
    buildSliders();
    await Promise.all([loadHealth(), loadAdmin(), loadRecent()]);
    setStatus("ready");
    document.body.dataset.ready = "true";
  }

  // ------------------------------------------------------------------ actions
  function startOutput(pre) {
    pre.textContent = "";
    pre.dataset.state = "streaming";
    delete pre.dataset.finish;
  }

  /** Stream `body` into `pre` and `bars`; resolves with a short summary, or rejects with the API's error. */
  async function run(body, pre, bars, meta, signal) {
    const routed = body.model === state.routed && !body.weights;
    const t0 = performance.now();
    let usage = null;
    let version = null;
    startOutput(pre);
    bars.dataset.state = "waiting";
    try {
      await stream(body, {
        text: (t) => pre.append(t),
        ext: (ext) => { version = ext.bundle_version; renderWeights(bars, ext.weights, routed); },
        finish: (reason) => { pre.dataset.finish = reason; },
        usage: (u) => { usage = u; },
      }, signal);
      pre.dataset.state = "done";
    } catch (e) {
      pre.dataset.state = e.name === "AbortError" ? "stopped" : "error";
      if (e.name !== "AbortError") pre.dataset.error = e.message;
      throw e;
    } finally {
      const parts = [];
      if (usage) parts.push(`${usage.completion_tokens} tokens`);
      parts.push(`${Math.round(performance.now() - t0)} ms`);
      if (version !== null) parts.push(`bundle v${version}`);
      if (pre.dataset.finish) parts.push(`finish: ${pre.dataset.finish}`);
      if (meta) meta.textContent = parts.join(" · ");
    }
  }

  function handleFailure(e) {
    if (e.name === "AbortError") return;
    showError(e.message);
    if (e.status === 401) {
      $("auth").hidden = false;
      setStatus("a key is needed");
    }
  }

  async function send() {
    const prompt = $("prompt").value;
    if (!prompt.trim()) return showError("Type a prompt first.");
    showError("");
    const controller = new AbortController();
    state.single = controller;
    $("send").disabled = true;
    $("stop").disabled = false;
    const body = requestBody($("model").value, prompt, overrideWeights());
    $("weights-source").textContent = body.weights ? "(override)"
      : body.model === state.routed ? "(router)" : `(composition ${body.model})`;
    try {
      await run(body, $("output"), $("weights"), $("output-meta"), controller.signal);
    } catch (e) {
      handleFailure(e);
    } finally {
      state.single = null;
      $("send").disabled = false;
      $("stop").disabled = true;
      loadRecent();
    }
  }

  async function compare() {
    const prompt = $("prompt").value;
    if (!prompt.trim()) return showError("Type a prompt first.");
    const models = [0, 1, 2].map((i) => $(`compare-model-${i}`).value).filter(Boolean);
    if (models.length < 2) return showError("Pick at least two compositions to compare.");
    showError("");
    const box = $("compare-results");
    box.dataset.state = "streaming";
    $("compare").disabled = true;
    const cols = models.map((m, i) => {
      const pre = el("pre", { class: "output", "data-testid": `compare-output-${i}`, "data-state": "idle" });
      const bars = el("div", { class: "weights small", "data-testid": `compare-weights-${i}` });
      const meta = el("div", { class: "meta", "data-testid": `compare-meta-${i}` });
      return { m, pre, bars, meta, col: el("div", { class: "column", "data-testid": `compare-col-${i}`, "data-model": m },
                                           el("h3", { text: m }), pre, bars, meta) };
    });
    box.replaceChildren(...cols.map((c) => c.col));
    const results = await Promise.allSettled(
      cols.map((c) => run(requestBody(c.m, prompt, null), c.pre, c.bars, c.meta)));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) handleFailure(failed.reason);
    box.dataset.state = failed ? "error" : "done";
    $("compare").disabled = false;
    loadRecent();
  }

  // ------------------------------------------------------------------ wiring
  document.addEventListener("DOMContentLoaded", () => {
    $("send").addEventListener("click", send);
    $("stop").addEventListener("click", () => { if (state.single) state.single.abort(); });
    $("compare").addEventListener("click", compare);
    $("override").addEventListener("change", syncOverride);
    $("recent-refresh").addEventListener("click", loadRecent);
    $("compare-model-2").addEventListener("change", (ev) => { ev.target.dataset.touched = "1"; });
    $("prompt").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) send();
    });
    $("auth-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const k = $("key-input").value.trim();
      if (!k) return;
      sessionStorage.setItem(KEY, k);
      $("key-input").value = "";
      init();
    });
    $("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); init(); });
    init();
  });
})();
