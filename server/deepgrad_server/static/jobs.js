// The jobs page: the list as GET /jobs answers it (filtered by the server), read again whenever the job-list
// stream (/events) says something changed; the studies below it.
"use strict";

(function () {
  const { h, fmt, api } = DG;
  const $ = (id) => document.getElementById(id);
  const LIMIT = 100;
  const MAX_COMPARE = 12;
  const selected = new Set();
  // The filters applied: those in the address, which the inputs change (a name once typing pauses). A live
  // reload reads these, not the inputs, so the table never shows a filter the address does not.
  function fromInputs() {
    const q = new URLSearchParams();
    if ($("filter-name").value.trim()) q.set("name", $("filter-name").value.trim());
    if ($("filter-state").value) q.set("state", $("filter-state").value);
    return q;
  }
  const given = new URLSearchParams(location.search);
  $("filter-name").value = given.get("name") || "";
  $("filter-state").value = given.get("state") || "";
  if ($("filter-state").selectedIndex < 0) $("filter-state").value = "";  // a state it does not list: "any"
  function showInAddress() {
    history.replaceState(null, "", filters.toString() ? "?" + filters : location.pathname);
  }
  let filters = fromInputs();
  if (filters.toString() !== given.toString()) showInAddress();  // what it cannot apply (an unknown state) goes

  function verdict(job) {
    const s = job.summary;
    if (!s || s.vanishing === null || s.vanishing === undefined) return h("span", { class: "muted" }, "\u2013");
    const part = s[s.vanishing_source] || {};
    return h("span", { class: "verdict-tag " + (s.vanishing ? "bad" : "good"),
                       title: `first/last ${s.vanishing_source} gradient ratio ${fmt.num(part.first_last_ratio)}` },
      s.vanishing ? "vanishing" : "healthy", " ", h("span", { class: "muted" }, fmt.num(part.first_last_ratio, 2)));
  }

  function progress(job) {
    const p = job.progress;
    if (!p) return h("span", { class: "muted" }, job.state === "queued" ? "waiting" : "\u2013");
    const f = p.total_steps ? Math.min(1, p.step / p.total_steps) : 0;
    const bar = h("span", { class: "mini" }, h("span", { class: "state-" + job.state }));
    bar.firstChild.style.width = (100 * f).toFixed(1) + "%";
    return [bar, `${p.epoch}/${p.epochs} ep`];
  }

  function model(spec) {
    const m = spec.model || {};
    return m.arch + (m.width && m.width !== 1 ? ` \u00d7${m.width}` : "") + " \u00b7 " + ((spec.data || {}).name || "");
  }

  function row(job) {
    const box = h("input", { type: "checkbox", "aria-label": "select " + job.name, checked: selected.has(job.id),
                             onchange: (e) => { if (e.target.checked) selected.add(job.id); else selected.delete(job.id);
                                                updateCompare(); } });
    const acc = job.final ? job.final.test_acc : job.progress ? job.progress.test_acc : null;
    return h("tr", { dataset: { id: job.id, state: job.state } },
      h("td", { class: "pick" }, box),
      h("td", { class: "name" }, h("a", { href: `/ui/jobs/${job.id}` }, job.name)),
      h("td", {}, DG.badge(job.state), job.reason && job.reason !== job.state
        ? h("span", { class: "muted small", title: job.message || "" }, " " + job.reason) : null),
      h("td", { class: "progress-col" }, progress(job)),
      h("td", {}, verdict(job)),
      h("td", { class: "num" }, acc === null || acc === undefined ? "\u2013" : fmt.pct(acc)),
      h("td", {}, model(job.spec)),
      h("td", { title: job.created_at }, fmt.ago(job.created_at)),
      h("td", {}, h("code", {}, job.id)));
  }

  function updateCompare() {
    const n = selected.size;
    $("compare-selected").disabled = n < 1 || n > MAX_COMPARE;
    $("compare-selected").textContent = n ? `Compare selected (${n})` : "Compare selected";
  }
  $("compare-selected").addEventListener("click", () => {
    location.assign("/ui/compare?ids=" + [...selected].join(","));
  });

  const load = DG.serial(async () => {
    const q = new URLSearchParams(filters);
    q.set("limit", LIMIT);
    const [jobs, studies] = await Promise.all([api("/jobs?" + q), api("/studies?limit=20")]);
    $("jobs").tBodies[0].replaceChildren(...jobs.data.map(row));
    $("jobs-empty").hidden = jobs.data.length > 0;
    $("job-count").textContent = jobs.count > jobs.data.length ? `(${jobs.data.length} of ${jobs.count})`
      : `(${jobs.count})`;
    $("studies").tBodies[0].replaceChildren(...studies.data.map((s) => h("tr", {},
      h("td", { class: "name" }, h("a", { href: `/ui/studies/${s.id}` }, s.name)),
      h("td", {}, DG.badge(s.state)),
      h("td", {}, Object.entries(s.counts).map(([k, v]) => `${v} ${k}`).join(", ")),
      h("td", {}, s.preset || "\u2013"),
      h("td", { title: s.created_at }, fmt.ago(s.created_at)),
      h("td", {}, h("code", {}, s.id)))));
    $("studies-empty").hidden = studies.data.length > 0;
    document.body.dataset.ready = "1";
  });

  // Filters: in the address (a reload or a shared link keeps them), applied by the server.
  let typing = null;
  function filtersChanged() {
    filters = fromInputs();
    showInAddress();
    load();
  }
  $("filter-name").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(filtersChanged, 250); });
  $("filter-state").addEventListener("change", filtersChanged);
  $("job-filters").addEventListener("submit", (e) => { e.preventDefault(); filtersChanged(); });

  // Live: the stream says when any job changed; the list is read again at most once a second, and not at all
  // while the tab is hidden (once when it shows again).
  let last = 0;
  let timer = null;
  let missed = false;
  function changed() {
    if (document.hidden) { missed = true; return; }
    clearTimeout(timer);
    timer = setTimeout(() => { last = Date.now(); load(); }, Math.max(0, last + 1000 - Date.now()));
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && missed) { missed = false; changed(); }
  });
  const events = new EventSource("/events?limit=1");
  events.addEventListener("jobs", changed);
  // "updated 3 min ago" and "just now" age: redrawn from the last answer once a minute.
  setInterval(changed, 60000);

  updateCompare();
  load();
})();
