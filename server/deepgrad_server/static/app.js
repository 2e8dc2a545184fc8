// DeepGrad dashboard: what every page shares (window.DG). No build step, no framework: the API does the work
// (downsampling, verdicts, differences); this draws what it answers.
"use strict";

(function () {
  const DG = {};
  window.DG = DG;

  // Log out: the session's cookies are cleared; the login page says how to come back.
  document.addEventListener("DOMContentLoaded", () => {
    const button = document.getElementById("logout");
    if (!button) return;
    button.addEventListener("click", async () => {
      await DG.api("/logout", { method: "POST" }).catch(() => null);
      location.assign("/login");
    });
  });

  // ------------------------------------------------------------------------------------------------ HTTP

  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : JSON.stringify(detail));
      this.status = status;
    }
  }
  DG.ApiError = ApiError;

  function cookie(name) {
    const hit = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
    return hit ? decodeURIComponent(hit.slice(name.length + 1)) : null;
  }

  // The session's CSRF token, read from its (non-HttpOnly) cookie and sent as a header on every change.
  DG.CSRF_COOKIE = "deepgrad_csrf";
  DG.CSRF_HEADER = "X-CSRF-Token";

  DG.api = async function (path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      const token = cookie(DG.CSRF_COOKIE);
      if (token) headers[DG.CSRF_HEADER] = token;
    }
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, credentials: "same-origin",
                                  body: body === undefined ? undefined : JSON.stringify(body) });
    if (r.status === 401) {
      location.reload(); // the session ended: the page itself will say how to log in again
      throw new ApiError(401, "not logged in");
    }
    const data = r.status === 204 ? null : await r.json().catch(() => null);
    if (!r.ok) throw new ApiError(r.status, data && data.detail ? data.detail : r.statusText);
    return data;
  };

  // Runs `fn` now and again on demand, never twice at once; a request while it runs schedules one more run.
  DG.serial = function (fn) {
    let running = null;
    let again = false;
    const run = async () => {
      if (running) { again = true; return running; }
      running = (async () => {
        do {
          again = false;
          try { await fn(); } catch (err) { DG.report(err); }
        } while (again);
      })();
      try { await running; } finally { running = null; }
    };
    return run;
  };

  // A problem for the user: shown in the page's banner (and in the console, as a warning, for developers).
  DG.report = function (err) {
    console.warn(err);
    let banner = document.getElementById("banner");
    if (!banner) {
      banner = DG.h("div", { id: "banner", class: "banner", role: "alert" });
      document.querySelector("main").prepend(banner);
    }
    banner.textContent = String(err && err.message ? err.message : err);
    banner.hidden = false;
  };

  // --------------------------------------------------------------------------------------------------- DOM

  // h("a", {href: "/"}, "text", child...): text is always text (names come from users).
  DG.h = function (tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  };

  DG.kv = function (tbody, rows) {
    tbody.replaceChildren(...rows.map(([k, v]) => DG.h("tr", {}, DG.h("th", {}, k), DG.h("td", {}, v))));
  };

  DG.stats = function (dl, items) {
    dl.replaceChildren(...items.filter(([, v]) => v !== null && v !== undefined)
      .flatMap(([k, v]) => [DG.h("dt", {}, k), DG.h("dd", {}, v)]));
  };

  DG.badge = function (state) {
    return DG.h("span", { class: "badge state-" + state }, state);
  };

  DG.TERMINAL = new Set(["succeeded", "failed", "cancelled", "diverged"]);

  // -------------------------------------------------------------------------------------------- formatting

  const SUPERSCRIPT = { "-": "\u207b", 0: "\u2070", 1: "\u00b9", 2: "\u00b2", 3: "\u00b3", 4: "\u2074",
                        5: "\u2075", 6: "\u2076", 7: "\u2077", 8: "\u2078", 9: "\u2079" };

  DG.fmt = {
    // Never "0" for a small positive number: 3.2e-7, not 0.000.
    num(v, digits = 3) {
      if (v === null || v === undefined || Number.isNaN(v)) return "\u2013";
      if (!Number.isFinite(v)) return v > 0 ? "\u221e" : "-\u221e";
      const a = Math.abs(v);
      if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(Math.max(0, digits - 1)).replace("e+", "e");
      return Number(v.toPrecision(digits)).toLocaleString("en-US", { maximumFractionDigits: 6 });
    },
    pct(v) { return v === null || v === undefined ? "\u2013" : (100 * v).toFixed(1) + "%"; },
    int(v) { return v === null || v === undefined ? "\u2013" : Math.round(v).toLocaleString("en-US"); },
    si(v, unit = "") {
      if (v === null || v === undefined) return "\u2013";
      const p = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]].find(([d]) => Math.abs(v) >= d);
      return p ? (v / p[0]).toPrecision(3) + " " + p[1] + unit : String(v) + (unit ? " " + unit : "");
    },
    // 10^k as "1e-5"-like text, with superscripts: "10⁻⁵"; other values as mantissa×10^k.
    pow10(v) {
      if (v === null || v === undefined || v <= 0) return "";
      const k = Math.round(Math.log10(v));
      if (Math.abs(v / 10 ** k - 1) < 1e-9) {
        return k >= -3 && k <= 3 ? String(Number((10 ** k).toPrecision(1)))
          : "10" + String(k).split("").map((c) => SUPERSCRIPT[c]).join("");
      }
      return DG.fmt.num(v, 2);
    },
    seconds(s) {
      if (s === null || s === undefined) return "\u2013";
      if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
      if (s < 3600) return Math.floor(s / 60) + " min " + Math.round(s % 60) + " s";
      return Math.floor(s / 3600) + " h " + Math.round((s % 3600) / 60) + " min";
    },
    date(iso) {
      if (!iso) return "\u2013";
      const d = new Date(iso);
      return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "short" });
    },
    ago(iso) {
      if (!iso) return "\u2013";
      const s = (Date.now() - new Date(iso).getTime()) / 1000;
      if (s < 60) return "just now";
      if (s < 3600) return Math.floor(s / 60) + " min ago";
      if (s < 86400) return Math.floor(s / 3600) + " h ago";
      return DG.fmt.date(iso);
    },
    value(v) { return typeof v === "object" && v !== null ? JSON.stringify(v) : String(v); },
  };

  // uPlot's log axis prints its splits with a 3-decimal formatter ("0" below 1e-3): label them ourselves.
  DG.logAxisValues = (u, splits) => splits.map((v) => DG.fmt.pow10(v));
  DG.linAxisValues = (u, splits) => splits.map((v) => DG.fmt.num(v, 3));
  // Log axes: over more than three decades, labels, ticks and grid lines at powers of ten only (every k-th over
  // many decades); over fewer, grid lines at every 1..9 multiple and labels at 1, 2 and 5.
  const isPow10 = (v) => v > 0 && Math.abs(Math.log10(v) - Math.round(Math.log10(v))) < 1e-9;
  const mantissa = (v) => Math.round(v / 10 ** Math.floor(Math.log10(v) + 1e-9));
  function logFilter(labels) {
    return (u, splits) => {
      const decades = splits.filter(isPow10).length;
      if (decades <= 3) return labels ? splits.map((v) => ([1, 2, 5].includes(mantissa(v)) ? v : null)) : splits;
      const every = Math.ceil(decades / 8);
      return splits.map((v) => (isPow10(v) && Math.round(Math.log10(v)) % every === 0 ? v : null));
    };
  }
  DG.logLabelFilter = logFilter(true);
  DG.logGridFilter = logFilter(false);

  // ------------------------------------------------------------------------------------------- colours

  // Viridis at 9 stops: first layer dark purple, last yellow-green (the pale end of the map is cut: it would not
  // show on white).
  const VIRIDIS = [[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141], [39, 173, 129],
                   [92, 200, 99], [170, 220, 50], [253, 231, 37]];
  DG.depthColor = function (t) {
    const x = 0.92 * Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  };
  // Distinct colours for jobs side by side: matplotlib's tab10, in its order, as the server's figures colour the
  // same jobs (deepgrad_core.plots: job i is tab10(i % 10)), so a job has one colour on the whole page.
  const JOB_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                       "#bcbd22", "#17becf"];
  DG.jobColor = (i) => JOB_COLOURS[i % JOB_COLOURS.length];

  // ------------------------------------------------------------------------------------------ visibility

  // Work only for what is on screen: callbacks run when an element enters (true) or leaves (false) the view.
  const watched = new Map(); // element -> {visible, callbacks}
  const observer = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const w = watched.get(e.target);
      if (!w) continue;
      w.visible = e.isIntersecting;
      w.callbacks.forEach((cb) => cb(e.isIntersecting));
    }
  }, { rootMargin: "200px 0px" });
  // Returns whether `el` is in view now.
  DG.whenVisible = function (el, cb) {
    let w = watched.get(el);
    if (!w) {
      w = { visible: false, callbacks: [] };
      watched.set(el, w);
      observer.observe(el);
    } else if (w.visible) {
      queueMicrotask(() => cb(true)); // already in view: the observer will not say so again
    }
    w.callbacks.push(cb);
    return () => w.visible;
  };

  // ---------------------------------------------------------------------------------------- PNG figures

  // A server-rendered figure (<img data-src>): fetched once in view and once `available`; `refresh()`
  // fetches it again (now if in view, else when it comes into view) and swaps it in only once loaded, so the
  // page never flashes or moves. Its <figure> says where it is: data-state none (nothing to draw yet, with
  // data-empty saying why), waiting, loaded or error.
  class Figure {
    constructor(img, { available = false } = {}) {
      this.img = img;
      this.base = img.dataset.src;
      this.available = available;
      this.stale = true;
      this.version = 0;
      this.loading = false;
      this.placeholder(available ? "" : "Not available yet", available ? "waiting" : "none");
      this.isVisible = DG.whenVisible(img, (v) => { if (v) this.load(); });
    }
    placeholder(text, state) {
      const fig = this.img.closest("figure");
      if (!fig) return;
      fig.dataset.empty = text;
      fig.dataset.state = state;
    }
    setAvailable(yes, why = "Not available yet") {
      if (yes === this.available) return;
      this.available = yes;
      if (!yes) { this.img.removeAttribute("src"); this.placeholder(why, "none"); return; }
      if (!this.img.getAttribute("src")) this.placeholder("", "waiting");
      this.stale = true;
      this.load();
    }
    refresh() {
      this.stale = true;
      this.load();
    }
    setSource(url) {
      if (url === this.base) return;
      this.base = url;
      this.refresh();
    }
    async load() {
      if (!this.available || !this.stale || !this.isVisible() || this.loading) return;
      this.loading = true;
      this.stale = false;
      const sep = this.base.includes("?") ? "&" : "?";
      const url = this.version ? `${this.base}${sep}v=${this.version}` : this.base;
      this.version += 1;
      const next = new Image();
      next.decoding = "async";
      try {
        await new Promise((resolve, reject) => {
          next.onload = resolve;
          next.onerror = () => reject(new Error("could not load " + this.base));
          next.src = url;
        });
        this.img.src = next.src;
        this.placeholder("", "loaded");
        if (!this.img.dataset.loadedAt) this.img.dataset.loadedAt = String(Math.round(performance.now()));
      } catch (err) {
        this.placeholder("Could not draw this figure (see the server log)", "error");
      } finally {
        this.loading = false;
      }
      if (this.stale) this.load();
    }
  }
  DG.Figure = Figure;

  // ----------------------------------------------------------------------------------------- uPlot charts

  // A uPlot chart made when it first comes into view and sized to its box. `update(data, {follow})` draws new
  // data: while the user has zoomed, their view stays put (the scales are kept); otherwise it shows all.
  DG.charts = {}; // by element id: for the browser tests and the benchmark to read what is drawn
  class Chart {
    constructor(el, makeOpts, { legend = 28 } = {}) {
      this.el = el;
      DG.charts[el.id] = this;
      this.legend = legend; // px below the plot for its legend (scrolls when longer)
      this.makeOpts = makeOpts;
      this.plot = null;
      this.data = null;
      this.zoomed = false;
      this.ours = false;
      this.onZoom = null;
      this.isVisible = DG.whenVisible(el, (v) => { if (v) this.draw(); });
      new ResizeObserver(() => {
        if (this.plot) this.plot.setSize(this.size());
      }).observe(el);
    }
    size() {
      return { width: Math.max(200, this.el.clientWidth),
               height: Math.max(120, this.el.clientHeight - this.legend - 4) };
    }
    update(data) {
      this.data = data;
      this.draw();
    }
    // Other series from now on: the next update makes the plot anew.
    reset() {
      if (this.plot) this.plot.destroy();
      this.plot = null;
      this.data = null;
      this.drawn = null;
      this.zoomed = false;
      delete this.el.dataset.drawn;
    }
    draw() {
      if (!this.data || !this.isVisible()) return; // drawn when it comes into view
      if (!this.plot) {
        const opts = this.makeOpts(this.data);
        opts.hooks = opts.hooks || {};
        opts.hooks.setScale = [...(opts.hooks.setScale || []), (u, key) => {
          if (key === "x" && !this.ours) this.userZoom(u);
        }];
        this.ours = true;
        this.plot = new uPlot({ ...this.size(), ...opts }, this.data, this.el);
        this.ours = false;
        const legend = this.el.querySelector(".u-legend");
        if (legend) legend.style.maxHeight = this.legend + "px";
        this.drawn = this.data;
        this.el.dataset.drawn = "1";
        delete this.el.dataset.empty;
        this.el.dataset.drawnAt = String(Math.round(performance.now())); // for the benchmark: first drawn
        return;
      }
      if (this.drawn === this.data) return;
      this.drawn = this.data;
      this.ours = true;
      this.plot.setData(this.data, !this.zoomed); // zoomed: keep the user's view; else fit the new data
      this.ours = false;
    }
    userZoom(u) {
      const xs = this.data[0];
      const { min, max } = u.scales.x;
      this.zoomed = xs.length > 1 && (min > xs[0] || max < xs[xs.length - 1]);
      if (this.onZoom) this.onZoom(this.zoomed ? [min, max] : null);
    }
  }
  DG.Chart = Chart;

  // Options of a line chart over steps or epochs: log or linear y, one series per entry of `series`.
  DG.INTEGER_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6];
  DG.lineOpts = function ({ xLabel, yLabel, log = false, series, xValues, legend = true, integerX = true }) {
    return {
      legend: { show: legend, live: true },
      cursor: { drag: { x: true, y: false }, focus: { prox: 16 } },
      focus: { alpha: 0.25 },
      scales: { x: { time: false }, y: log ? { distr: 3, log: 10 } : {} },
      axes: [
        { label: xLabel, values: xValues || DG.linAxisValues, stroke: "#5b6472", grid: { stroke: "#eceef2" },
          incrs: integerX ? DG.INTEGER_INCRS : undefined },
        { label: yLabel, values: log ? DG.logAxisValues : DG.linAxisValues, size: 64, stroke: "#5b6472",
          grid: { stroke: "#eceef2" },
          ...(log ? { filter: DG.logLabelFilter, grid: { stroke: "#eceef2", filter: DG.logGridFilter },
                      ticks: { filter: DG.logGridFilter } } : {}) },
      ],
      series: [{ label: xLabel, value: (u, v) => (v === null ? "\u2013" : DG.fmt.num(v, 6)) },
        ...series.map((s) => ({ spanGaps: false, width: 1.25, points: { show: false },
                                value: (u, v) => DG.fmt.num(v, 3), ...s }))],
    };
  };
})();
