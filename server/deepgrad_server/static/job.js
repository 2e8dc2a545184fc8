// The job page: follows /jobs/{id}/events; norm points come from /jobs/{id}/gradients (downsampled by the server),
// appended as the job stores them; figures are the server's PNGs, fetched again when what they show changed.
"use strict";

(function () {
  const { h, fmt, api } = DG;
  const jobId = document.body.dataset.jobId;
  const POINTS = 2000; // steps per request: the server keeps min and max per bucket, so at most this many
  const HEATMAP_EVERY_MS = 5000; // a running job's heatmap is drawn again at most this often (it costs the server)
  const $ = (id) => document.getElementById(id);

  let job = null;
  const stored = {}; // norm kind -> last step the job has stored (the `norms` event)
  let lastEpoch = -1;
  let watched = false; // the job was queued or running while this page was open: draw everything once it ends

  // ------------------------------------------------------------------------------------------- the job

  function renderJob() {
    document.title = `${job.name} · DeepGrad`;
    $("job-name").textContent = job.name;
    $("job-state").replaceWith(Object.assign(DG.badge(job.state), { id: "job-state" }));
    const times = [`created ${fmt.date(job.created_at)}`];
    if (job.started_at) times.push(`started ${fmt.date(job.started_at)}`);
    if (job.finished_at) times.push(`ended ${fmt.date(job.finished_at)}`);
    if (job.attempts > 1) times.push(`${job.attempts} attempts`);
    $("job-times").textContent = "· " + times.join(" · ");
    const message = job.message || (job.reason ? job.reason : null);
    $("job-message").hidden = !message;
    $("job-message").textContent = message ? `${job.reason || job.state}: ${message}` : "";
    const active = !DG.TERMINAL.has(job.state);
    $("cancel-job").hidden = !active;
    $("delete-job").hidden = active;
    renderProgress(job.progress, job.state);
    renderVerdict();
    renderSpec();
    renderCost();
    renderEnvironment();
    renderFinal();
  }

  function renderProgress(p, state) {
    const fraction = p && p.total_steps ? p.step / p.total_steps : DG.TERMINAL.has(state) ? 1 : 0;
    $("progress-fill").style.width = (100 * Math.min(1, fraction)).toFixed(1) + "%";
    $("progress-fill").className = "progress-fill state-" + state;
    if (!p) { DG.stats($("progress-stats"), [["state", state]]); return; }
    DG.stats($("progress-stats"), [
      ["epoch", `${p.epoch} / ${p.epochs}`],
      ["step", `${fmt.int(p.step)} / ${fmt.int(p.total_steps)}`],
      ["loss", p.loss === null ? null : fmt.num(p.loss, 4)],
      ["train acc.", p.train_acc === null ? null : fmt.pct(p.train_acc)],
      ["test acc.", p.test_acc === null ? null : fmt.pct(p.test_acc)],
      ["images/s", p.images_per_sec === null ? null : fmt.int(p.images_per_sec)],
      ["updated", p.updated_at ? fmt.ago(p.updated_at) : null],
    ]);
  }

  function renderVerdict() {
    const box = $("verdict");
    const s = job.summary;
    if (!s) {
      box.replaceChildren(h("p", { class: "muted" }, DG.TERMINAL.has(job.state)
        ? "No verdict: the job recorded no gradient norms."
        : "Known when the job ends. Meanwhile the first / last layer ratio below shows it taking shape, epoch " +
          "by epoch."));
      return;
    }
    const verdict = s.vanishing === true ? h("p", { class: "verdict bad" }, "Vanishing gradients")
      : s.vanishing === false ? h("p", { class: "verdict good" }, "No vanishing gradients")
        : h("p", { class: "verdict" }, "No verdict");
    const rows = [];
    for (const kind of ["weight", "activation"]) {
      const k = s[kind];
      if (!k || !k.has_data) continue;
      rows.push(h("tr", { class: kind === s.vanishing_source ? "source" : "" },
        h("th", {}, kind + " gradient" + (kind === s.vanishing_source ? " (verdict)" : "")),
        h("td", {}, fmt.num(k.first_last_ratio, 3)),
        h("td", {}, `${k.first_layer} / ${k.last_layer}`),
        h("td", {}, fmt.num(k.fraction, 2)),
        h("td", {}, k.min_layer || "\u2013"),
        h("td", {}, k.vanishing === null ? "\u2013" : k.vanishing ? "yes" : "no")));
    }
    box.replaceChildren(verdict,
      h("p", { class: "muted small" }, "First / last main-path layer gradient norm over the last epoch; " +
        "vanishing when it is below the threshold (tracking.vanishing_fraction)."),
      h("table", { class: "grid compact" },
        h("thead", {}, h("tr", {}, h("th", {}, "norm"), h("th", {}, "first/last"), h("th", {}, "layers"),
          h("th", {}, "threshold"), h("th", {}, "smallest"), h("th", {}, "vanishing"))),
        h("tbody", {}, rows)));
  }

  function renderSpec() {
    const changes = Object.entries(job.changes || {});
    DG.kv($("changes").tBodies[0], changes.length ? changes.map(([k, v]) => [k, fmt.value(v)])
      : [["(nothing)", "the architecture's defaults"]]);
    $("spec").textContent = JSON.stringify(job.spec, null, 2);
  }

  function renderCost() {
    const c = job.cost;
    DG.stats($("cost-stats"), c ? [
      ["parameters", fmt.si(c.total_params)],
      ["FLOPs / image", fmt.si(c.flops_per_image)],
      ["activations / image", c.activation_bytes_per_image ? fmt.si(c.activation_bytes_per_image, "B") : null],
    ] : [["cost", "known once the job starts"]]);
  }

  function renderEnvironment() {
    const env = job.environment || {};
    const rows = Object.entries(env).filter(([, v]) => v !== null).map(([k, v]) => [k, fmt.value(v)]);
    if (job.steps_per_epoch) rows.push(["steps per epoch", fmt.int(job.steps_per_epoch)]);
    DG.kv($("environment").tBodies[0], rows.length ? rows : [["(not yet)", "known once the job starts"]]);
  }

  function renderFinal() {
    const f = job.final;
    const tbody = $("final").tBodies[0];
    if (!f) { tbody.replaceChildren(); return; }
    const cells = [["test acc.", fmt.pct(f.test_acc)], ["test loss", fmt.num(f.test_loss, 4)],
      ["train acc.", fmt.pct(f.train_acc)], ["train loss", fmt.num(f.train_loss, 4)],
      ["best test acc.", `${fmt.pct(f.best_test_acc)} (epoch ${f.best_epoch + 1})`],
      ["training time", fmt.seconds(f.seconds)]];
    tbody.replaceChildren(h("tr", {}, cells.map(([k, v]) => [h("th", {}, k), h("td", {}, v)])));
  }

  // ------------------------------------------------------------------------------- per-layer norm lines

  // Whether the job has norms of `kind` to ask for (asking before would be a 409).
  function hasNorms(kind) {
    if (stored[kind] !== undefined) return true;
    return Boolean(job && DG.TERMINAL.has(job.state) && job.summary && job.summary[kind] &&
                   job.summary[kind].has_data);
  }

  const norms = {
    kind: "weight", layers: null, steps: [], values: [], downsampled: false, records: 0,
    detail: null, // the zoomed range, fetched in detail: {range: [a, b], steps, values}
    chart: null,
  };

  function normsOpts() {
    return DG.lineOpts({
      xLabel: "step", yLabel: `${norms.kind} gradient L2 norm`, log: true,
      series: norms.layers.map((l) => ({
        label: l.name, stroke: DG.depthColor(l.relative_depth),
        dash: l.role === "shortcut" || l.role === "reduce" ? [5, 4] : undefined,
      })),
    });
  }

  // uPlot's data: [steps, layer 1, ...]; a zero has no place on a log axis (drawn as a gap).
  function columns(steps, values) {
    return [steps, ...values.map((col) => col.map((v) => (v !== null && v > 0 ? v : null)))];
  }

  function shown() {
    if (!norms.detail) return columns(norms.steps, norms.values);
    // Outside the zoomed range the overview, inside it the detail.
    const [a, b] = norms.detail.range;
    const keep = norms.steps.map((s) => s < a || s > b);
    const steps = [];
    const values = norms.values.map(() => []);
    let i = 0;
    const push = (s, col) => { steps.push(s); values.forEach((v, k) => v.push(col(k))); };
    while (i < norms.steps.length && norms.steps[i] < a) { push(norms.steps[i], (k) => norms.values[k][i]); i++; }
    norms.detail.steps.forEach((s, j) => push(s, (k) => norms.detail.values[k][j]));
    for (; i < norms.steps.length; i++) if (keep[i]) push(norms.steps[i], (k) => norms.values[k][i]);
    return columns(steps, values);
  }

  function drawNorms() {
    const el = $("norms-chart");
    if (!norms.layers) return;
    if (!norms.chart) {
      norms.chart = new DG.Chart(el, normsOpts, { legend: 64 });
      norms.chart.onZoom = zoomed;
    }
    norms.chart.update(shown());
    el.dataset.points = String(norms.steps.length);
    el.dataset.detail = norms.detail ? norms.detail.range.join("-") : "";
    el.dataset.lastStep = String(norms.steps.length ? norms.steps[norms.steps.length - 1] : -1);
    $("norms-info").textContent = `${fmt.int(norms.records)} steps recorded` +
      (norms.downsampled ? `, ${fmt.int(norms.steps.length)} drawn (min/max per bucket)` : "");
  }

  function query(extra) {
    return `/jobs/${jobId}/gradients?kind=${norms.kind}&max_points=${POINTS}${extra}`;
  }

  const loadNorms = DG.serial(async () => {
    const kind = norms.kind;
    if (!hasNorms(kind)) return;
    const last = norms.steps.length ? norms.steps[norms.steps.length - 1] : -1;
    // Loaded, and nothing new stored since (the `norms` event says what is; an ended job stores nothing more).
    if (norms.layers && (stored[kind] === undefined || stored[kind] <= last)) return;
    // The tail only, appended; all again (downsampled anew) when the page holds twice the budget.
    const tail = norms.layers !== null && norms.steps.length + Math.min(POINTS, (stored[kind] ?? last) - last)
      <= 2 * POINTS;
    const d = await api(query(tail ? `&start=${last + 1}` : ""));
    if (kind !== norms.kind) return;
    if (tail) {
      norms.steps = norms.steps.concat(d.steps);
      norms.values = norms.values.map((col, k) => col.concat(d.values[k]));
      norms.records += d.records;
      norms.downsampled = norms.downsampled || d.downsampled;
    } else {
      norms.layers = d.layers;
      norms.steps = d.steps;
      norms.values = d.values;
      norms.records = d.records;
      norms.downsampled = d.downsampled;
    }
    drawNorms();
  });

  // The user zoomed (or zoomed out: null): the server sends that range in detail.
  let zoomTimer = null;
  function zoomed(range) {
    clearTimeout(zoomTimer);
    if (!range) {
      if (norms.detail) { norms.detail = null; drawNorms(); }
      return;
    }
    if (!norms.downsampled) return; // every recorded step is here already
    $("norms-chart").dataset.zoomAt = String(Math.round(performance.now()));
    zoomTimer = setTimeout(async () => {
      const [a, b] = [Math.floor(range[0]), Math.ceil(range[1])];
      const d = await api(query(`&start=${Math.max(0, a)}&end=${b + 1}`)).catch(DG.report);
      if (!d || !norms.chart.zoomed) return;
      norms.detail = { range: [a, b], steps: d.steps, values: d.values };
      drawNorms();
      $("norms-chart").dataset.detailAt = String(Math.round(performance.now()));
    }, 100); // a burst of zooms asks once
  }

  $("norm-kind").addEventListener("change", (e) => {
    norms.kind = e.target.value;
    norms.layers = null; norms.steps = []; norms.values = []; norms.detail = null;
    if (norms.chart) norms.chart.reset(); // other layers and labels: a new plot
    if (!hasNorms(norms.kind)) $("norms-chart").dataset.empty = `No ${norms.kind} gradient norms (yet).`;
    loadNorms();
  });

  // ------------------------------------------------------------------------------------------ metrics

  let lossChart = null;
  let accChart = null;
  const loadMetrics = DG.serial(async () => {
    const m = await api(`/jobs/${jobId}/metrics`);
    if (!m.epochs.length) return;
    const x = m.epochs.map((e) => e.epoch + 1);
    const col = (k) => m.epochs.map((e) => (e[k] === undefined ? null : e[k]));
    if (!lossChart) {
      lossChart = new DG.Chart($("loss-chart"), () => DG.lineOpts({
        xLabel: "epoch", yLabel: "loss", series: [
          { label: "train loss", stroke: "#4e79a7", dash: [6, 4], width: 2, points: { size: 6 } },
          { label: "test loss", stroke: "#4e79a7", width: 2, points: { size: 6 } }],
      }));
      accChart = new DG.Chart($("acc-chart"), () => DG.lineOpts({
        xLabel: "epoch", yLabel: "accuracy", series: [
          { label: "train acc.", stroke: "#e15759", dash: [6, 4], width: 2, points: { size: 6 },
            value: (u, v) => fmt.pct(v) },
          { label: "test acc.", stroke: "#e15759", width: 2, points: { size: 6 }, value: (u, v) => fmt.pct(v) }],
      }));
    }
    lossChart.update([x, col("train_loss"), col("test_loss")]);
    accChart.update([x, col("train_acc"), col("test_acc")]);
  });

  // ------------------------------------------------------------------------------------------- figures

  const figures = {
    heatmap: new DG.Figure($("heatmap")),
    depth: new DG.Figure($("depth")),
    ratio: new DG.Figure($("ratio")),
    filters: new DG.Figure($("filters")),
    cost: new DG.Figure($("cost")),
  };
  let heatmapAt = 0;
  let heatmapTimer = null;

  function figuresAvailable() {
    const epochs = job.progress ? job.progress.epoch : 0;
    figures.heatmap.setAvailable(hasNorms("weight"), "Drawn once the job has stored gradient norms");
    figures.depth.setAvailable(hasNorms("weight") && epochs >= 1, "Drawn after the first epoch");
    figures.ratio.setAvailable(hasNorms("weight") && epochs >= 1, "Drawn after the first epoch");
    figures.filters.setAvailable(epochs >= 1 || job.state === "succeeded", "Drawn after the first epoch");
    figures.cost.setAvailable(Boolean(job.cost), "Known once the job starts");
  }

  function refreshHeatmap() {
    clearTimeout(heatmapTimer);
    const wait = heatmapAt + HEATMAP_EVERY_MS - Date.now();
    if (wait > 0) { heatmapTimer = setTimeout(refreshHeatmap, wait); return; }
    heatmapAt = Date.now();
    figures.heatmap.refresh();
  }

  function epochChanged() {
    loadMetrics();
    for (const f of ["depth", "ratio", "filters"]) figures[f].refresh();
  }

  // ----------------------------------------------------------------------------------------- actions

  $("cancel-job").addEventListener("click", async () => {
    if (!confirm(`Cancel job ${job.name}? A running job stops within a few seconds.`)) return;
    $("cancel-job").disabled = true;
    try {
      job = await api(`/jobs/${jobId}/cancel`, { method: "POST" });
      renderJob();
    } catch (err) {
      DG.report(err);
    } finally {
      $("cancel-job").disabled = false;
    }
  });

  $("delete-job").addEventListener("click", async () => {
    if (!confirm(`Delete job ${job.name} and all its data? This cannot be undone.`)) return;
    try {
      await api(`/jobs/${jobId}`, { method: "DELETE" });
      location.assign("/");
    } catch (err) {
      DG.report(err);
    }
  });

  // ------------------------------------------------------------------------------------------- events

  function follow() {
    const events = new EventSource(`/jobs/${jobId}/events`);
    events.addEventListener("state", (e) => {
      const s = JSON.parse(e.data);
      Object.assign(job, s);
      renderJob();
    });
    events.addEventListener("progress", (e) => {
      const p = JSON.parse(e.data);
      job.progress = p;
      job.state = p.state || job.state;
      renderProgress(p, job.state);
      if (p.epoch !== lastEpoch) {
        lastEpoch = p.epoch;
        figuresAvailable();
        epochChanged();
      }
    });
    events.addEventListener("norms", (e) => {
      Object.assign(stored, JSON.parse(e.data));
      figuresAvailable();
      loadNorms();
      refreshHeatmap();
    });
    events.addEventListener("end", (e) => {
      events.close(); // the stream is over: EventSource would otherwise reconnect
      const end = JSON.parse(e.data);
      if (end.state === "deleted") {
        DG.report(new Error("This job was deleted."));
        return;
      }
      job = end;
      renderJob();
      figuresAvailable();
      loadNorms();
      if (watched) {
        heatmapAt = 0;
        refreshHeatmap();
        epochChanged();
        figures.cost.refresh();
      }
    });
  }

  async function start() {
    try {
      job = await api(`/jobs/${jobId}`);
    } catch (err) {
      DG.report(err);
      return;
    }
    lastEpoch = job.progress ? job.progress.epoch : 0;
    watched = !DG.TERMINAL.has(job.state);
    renderJob();
    figuresAvailable();
    if (lastEpoch >= 1) loadMetrics();
    else for (const id of ["loss-chart", "acc-chart"]) $(id).dataset.empty = "Drawn after the first epoch.";
    if (!hasNorms("weight")) $("norms-chart").dataset.empty = "Drawn once the job has stored gradient norms.";
    loadNorms();
    follow();
    document.body.dataset.ready = "1";
  }

  start();
})();
