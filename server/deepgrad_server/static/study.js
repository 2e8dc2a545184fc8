// The study page: GET /studies/{id} and its summary (rows computed by the server), the study's figures (PNG);
// read again when the job-list stream says one of its jobs changed.
"use strict";

(function () {
  const { h, fmt, api } = DG;
  const $ = (id) => document.getElementById(id);
  const studyId = document.body.dataset.studyId;
  const MAX_COMPARE = 12;
  let study = null;
  let ended = -1; // jobs ended when the figures were last drawn

  const figures = Object.fromEntries(["accuracy", "ratio", "depth", "metrics", "cost"].map(
    (k) => [k, new DG.Figure($("fig-" + k))]));

  function drawStudy(summary) {
    document.title = `${study.name} · DeepGrad`;
    $("study-name").textContent = study.name;
    $("study-state").replaceWith(Object.assign(DG.badge(study.state), { id: "study-state" }));
    const varied = summary.varied.length ? `varies ${summary.varied.join(", ")}` : "";
    const meta = [study.preset ? `preset ${study.preset}` : "", varied, `created ${fmt.date(study.created_at)}`];
    $("study-meta").textContent = "\u00b7 " + meta.filter(Boolean).join(" \u00b7 ");
    DG.stats($("study-counts"), [["jobs", String(study.jobs.length)],
      ...Object.entries(study.counts).map(([k, v]) => [k, String(v)])]);
    $("cancel-study").hidden = study.state === "ended";
    const ids = study.jobs.map((j) => j.job.id);
    $("compare-link").hidden = ids.length === 0;
    $("compare-link").href = "/ui/compare?ids=" + ids.slice(0, MAX_COMPARE).join(",");
    $("compare-link").textContent = ids.length > MAX_COMPARE ? `Compare its first ${MAX_COMPARE} jobs`
      : "Compare its jobs";

    const keys = summary.varied;
    $("summary").tHead.replaceChildren(h("tr", {}, h("th", {}, "#"), keys.map((k) => h("th", {}, h("code", {}, k))),
      h("th", {}, "State"), h("th", { class: "num" }, "Test acc."), h("th", { class: "num" }, "Train acc."),
      h("th", { class: "num" }, "Test loss"), h("th", { class: "num" }, "Parameters"),
      h("th", { class: "num" }, "FLOPs / image"), h("th", { class: "num" }, "Time"),
      h("th", { class: "num" }, "First / last"), h("th", {}, "Verdict"), h("th", {}, "Job")));
    $("summary").tBodies[0].replaceChildren(...summary.rows.map((r) => h("tr", { dataset: { id: r.job_id } },
      h("td", {}, String(r.position + 1)),
      keys.map((k) => h("td", {}, k in r.overrides ? fmt.value(r.overrides[k]) : "\u2013")),
      h("td", {}, DG.badge(r.state)),
      h("td", { class: "num" }, fmt.pct(r.test_acc)),
      h("td", { class: "num" }, fmt.pct(r.train_acc)),
      h("td", { class: "num" }, fmt.num(r.test_loss, 4)),
      h("td", { class: "num" }, fmt.si(r.params)),
      h("td", { class: "num" }, fmt.si(r.flops_per_image)),
      h("td", { class: "num" }, fmt.seconds(r.seconds)),
      h("td", { class: "num", title: r.ratio_kind ? r.ratio_kind + " gradient" : "" }, fmt.num(r.first_last_ratio, 3)),
      h("td", {}, r.vanishing === null || r.vanishing === undefined ? "\u2013"
        : h("span", { class: "verdict-tag " + (r.vanishing ? "bad" : "good") }, r.vanishing ? "vanishing" : "healthy")),
      h("td", {}, h("a", { href: `/ui/jobs/${r.job_id}` }, h("code", {}, r.job_id))))));
  }

  function drawFigures(summary) {
    const rows = summary.rows;
    const started = study.jobs.some((j) => j.job.progress && j.job.progress.epoch >= 1);
    const few = study.jobs.length <= MAX_COMPARE;
    figures.accuracy.setAvailable(rows.some((r) => r.test_acc !== null), "Drawn once a job has ended");
    figures.ratio.setAvailable(rows.some((r) => r.first_last_ratio !== null), "Drawn once a job has ended");
    figures.cost.setAvailable(rows.some((r) => r.test_acc !== null && r.params !== null), "Drawn once a job has ended");
    figures.depth.setAvailable(few && started, few ? "Drawn once a job has finished an epoch"
      : `Over at most ${MAX_COMPARE} jobs: compare some of them`);
    figures.metrics.setAvailable(few && started, few ? "Drawn once a job has finished an epoch"
      : `Over at most ${MAX_COMPARE} jobs: compare some of them`);
    const now = rows.filter((r) => DG.TERMINAL.has(r.state)).length;
    if (now !== ended) { // a job ended: every figure may have changed
      ended = now;
      Object.values(figures).forEach((f) => f.refresh());
    }
  }

  const load = DG.serial(async () => {
    const [s, summary] = await Promise.all([api(`/studies/${studyId}`), api(`/studies/${studyId}/summary`)]);
    study = s;
    drawStudy(summary);
    drawFigures(summary);
    document.body.dataset.ready = "1";
  });

  $("cancel-study").addEventListener("click", async () => {
    if (!confirm(`Cancel every job of study ${study.name} that has not ended?`)) return;
    $("cancel-study").disabled = true;
    try {
      await api(`/studies/${studyId}/cancel`, { method: "POST" });
      load();
    } catch (err) {
      DG.report(err);
    } finally {
      $("cancel-study").disabled = false;
    }
  });

  // Live: read again (at most every 2 s) when one of the study's jobs changed.
  let timer = null;
  let last = 0;
  let first = true;
  const events = new EventSource("/events?limit=1");
  events.addEventListener("jobs", (e) => {
    if (first) { first = false; return; }
    if (!study) return;
    const ids = new Set(study.jobs.map((j) => j.job.id));
    const change = JSON.parse(e.data);
    if (!change.data.some((j) => ids.has(j.id)) && !change.deleted.some((id) => ids.has(id))) return;
    clearTimeout(timer);
    timer = setTimeout(() => { last = Date.now(); load(); }, Math.max(0, last + 2000 - Date.now()));
  });

  load();
})();
