// The compare page: GET /compare?ids=... (metrics by epoch, mean norms by relative depth, spec differences, all
// aligned by the server) drawn as overlays; read again when the job-list stream says one of these jobs changed.
"use strict";

(function () {
  const { h, fmt, api } = DG;
  const $ = (id) => document.getElementById(id);
  const MAX = 12;
  let ids = (document.body.dataset.ids || "").split(",").filter(Boolean);
  let jobs = []; // the picker's list
  let result = null;

  // ------------------------------------------------------------------------------------------ the picker

  const loadPicker = DG.serial(async () => {
    const q = new URLSearchParams({ limit: 100 });
    const name = $("pick-name").value.trim();
    if (name) q.set("name", name);
    jobs = (await api("/jobs?" + q)).data;
    drawPicker();
  });

  function drawPicker() {
    // The selected jobs first (also when the search hides them), then the rest, newest first.
    const listed = new Map(jobs.map((j) => [j.id, j]));
    const chosen = result ? result.jobs.filter((j) => ids.includes(j.id)).map((j) => listed.get(j.id) || j) : [];
    const rows = [...chosen, ...jobs.filter((j) => !ids.includes(j.id))];
    $("picker").tBodies[0].replaceChildren(...rows.map((j) => h("tr", {},
      h("td", { class: "pick" }, h("input", {
        type: "checkbox", checked: ids.includes(j.id), "aria-label": "compare " + j.name,
        disabled: !ids.includes(j.id) && ids.length >= MAX,
        onchange: (e) => select(j.id, e.target.checked) })),
      h("td", { class: "name" }, h("a", { href: `/ui/jobs/${j.id}` }, j.name)),
      h("td", {}, DG.badge(j.state)),
      h("td", {}, j.spec && j.spec.model ? j.spec.model.arch : "\u2013"),
      h("td", {}, j.created_at ? fmt.ago(j.created_at) : ""),
      h("td", {}, h("code", {}, j.id)))));
  }

  function select(id, on) {
    ids = on ? [...ids, id] : ids.filter((x) => x !== id);
    history.replaceState(null, "", ids.length ? "?ids=" + ids.join(",") : location.pathname);
    load();
  }

  let typing = null;
  $("pick-name").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(loadPicker, 250); });
  $("pick-filters").addEventListener("submit", (e) => { e.preventDefault(); loadPicker(); });
  $("pick-clear").addEventListener("click", () => { ids = []; select(null, false); });

  // ---------------------------------------------------------------------------------------- the results

  // Colours as in the results table (no legend: two lines per job would crowd it).
  const accChart = new DG.Chart($("acc-chart"), () => DG.lineOpts({
    xLabel: "epoch", yLabel: "accuracy", series: seriesOf("acc.", (u, v) => fmt.pct(v)), legend: false }),
  { legend: 0 });
  const lossChart = new DG.Chart($("loss-chart"), () => DG.lineOpts({
    xLabel: "epoch", yLabel: "loss", series: seriesOf("loss"), legend: false }), { legend: 0 });
  const depthChart = new DG.Chart($("depth-chart"), () => ({
    ...DG.lineOpts({ xLabel: "relative depth", yLabel: "mean weight-gradient norm", log: true, integerX: false,
                     series: result.jobs.map((j, i) => ({ label: j.name, stroke: DG.jobColor(i), width: 2,
                                                          spanGaps: true, points: { size: 5 } })) }),
    cursor: { drag: { x: true, y: false } },
  }), { legend: 48 });
  const ratio = new DG.Figure($("ratio"));

  // Charts keep their series: a new selection makes new charts.
  function seriesOf(what, value) {
    return result.jobs.flatMap((j, i) => [
      { label: `${j.name} train ${what}`, stroke: DG.jobColor(i), dash: [6, 4], width: 1.5, points: { size: 5 },
        value },
      { label: `${j.name} test ${what}`, stroke: DG.jobColor(i), width: 2, points: { size: 5 }, value }]);
  }

  function drawResults() {
    const r = result;
    $("results").tBodies[0].replaceChildren(...r.jobs.map((j, i) => {
      const s = j.summary;
      const part = s && s.vanishing_source ? s[s.vanishing_source] : null;
      return h("tr", {},
        h("td", { class: "name" }, h("span", { class: "swatch", dataset: { i } }),
          h("a", { href: `/ui/jobs/${j.id}` }, j.name)),
        h("td", {}, DG.badge(j.state)),
        h("td", {}, j.arch),
        h("td", { class: "num" }, j.final ? fmt.pct(j.final.test_acc) : "\u2013"),
        h("td", { class: "num" }, j.final ? fmt.pct(j.final.train_acc) : "\u2013"),
        h("td", { class: "num" }, fmt.si(j.params)),
        h("td", { class: "num" }, fmt.si(j.flops_per_image)),
        h("td", { class: "num" }, fmt.int(j.epochs_completed)),
        h("td", { class: "num" }, fmt.seconds(j.seconds)),
        h("td", {}, s && s.vanishing !== null ? h("span", { class: "verdict-tag " + (s.vanishing ? "bad" : "good") },
          (s.vanishing ? "vanishing " : "healthy ") + fmt.num(part ? part.first_last_ratio : null, 2)) : "\u2013"));
    }));
    $("results").querySelectorAll(".swatch").forEach((el) => { el.style.background = DG.jobColor(+el.dataset.i); });

    // Spec differences, as the server found them.
    $("differences").tHead.replaceChildren(h("tr", {}, h("th", {}, "key"),
      r.jobs.map((j, i) => h("th", {}, h("span", { class: "swatch", dataset: { i } }), j.name))));
    $("differences").tHead.querySelectorAll(".swatch").forEach((el) => {
      el.style.background = DG.jobColor(+el.dataset.i);
    });
    $("differences").tBodies[0].replaceChildren(...r.differences.map((d) => h("tr", {},
      h("th", {}, h("code", {}, d.key)), d.values.map((v) => h("td", { class: "differs" },
        v === null ? "\u2013" : fmt.value(v))))));
    $("no-differences").hidden = r.differences.length > 0 || r.jobs.length < 2;

    // Metrics by epoch (1-based), one train and one test line per job.
    const epochs = r.by_epoch.map((e) => e.epoch + 1);
    const metric = (id, key) => r.by_epoch.map((e) => (e.jobs[id] ? e.jobs[id][key] : null));
    accChart.update([epochs, ...r.jobs.flatMap((j) => [metric(j.id, "train_acc"), metric(j.id, "test_acc")])]);
    lossChart.update([epochs, ...r.jobs.flatMap((j) => [metric(j.id, "train_loss"), metric(j.id, "test_loss")])]);

    // Depth profiles on one relative-depth axis: each job has values at its own depths (gaps elsewhere, spanned).
    const xs = [...new Set(r.jobs.flatMap((j) => (r.by_depth[j.id] || []).map((d) => d.relative_depth)))]
      .sort((a, b) => a - b);
    depthChart.update([xs, ...r.jobs.map((j) => {
      const at = new Map((r.by_depth[j.id] || []).map((d) => [d.relative_depth, d.mean_norm]));
      return xs.map((x) => (at.has(x) && at.get(x) > 0 ? at.get(x) : null));
    })]);
    const figures = r.jobs.some((j) => (r.by_depth[j.id] || []).length > 1);
    const chosen = r.jobs.map((j) => j.id).join(",");
    ratio.setSource(`/compare/plots/ratio.png?ids=${chosen}`);
    $("report-link").href = `/compare/report.html?ids=${chosen}`;
    ratio.setAvailable(figures, "Drawn once a job has finished an epoch");
  }

  let shown = "";
  const load = DG.serial(async () => {
    $("compared").hidden = ids.length === 0;
    $("report-link").hidden = ids.length === 0;
    if (!ids.length) { result = null; drawPicker(); return; }
    const r = await api("/compare?ids=" + ids.join(","));
    const key = r.jobs.map((j) => j.id).join(",");
    if (key !== shown) { // another selection: other series
      shown = key;
      [accChart, lossChart, depthChart].forEach((chart) => chart.reset());
    }
    result = r;
    drawResults();
    drawPicker();
    ratio.refresh();
    document.body.dataset.ready = "1";
  });

  // Live: the job-list stream names the jobs that changed; the comparison is read again (at most every 2 s) when
  // one of them is here.
  let timer = null;
  let last = 0;
  const events = new EventSource("/events?limit=1");
  let first = true;
  events.addEventListener("jobs", (e) => {
    if (first) { first = false; return; } // the current list: nothing changed yet
    const change = JSON.parse(e.data);
    const here = change.data.some((j) => ids.includes(j.id)) || change.deleted.some((id) => ids.includes(id));
    if (!here) return;
    clearTimeout(timer);
    timer = setTimeout(() => { last = Date.now(); load(); }, Math.max(0, last + 2000 - Date.now()));
  });

  loadPicker();
  load();
})();
