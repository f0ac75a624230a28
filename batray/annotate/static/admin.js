// The admin view: progress per annotator and Cohen's kappa on overlapping tasks (text only).
"use strict";

const fmt = (x) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(3));

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = String(c);
    tr.appendChild(td);
  }
  return tr;
}

document.addEventListener("DOMContentLoaded", async () => {
  const res = await fetch("/api/admin/summary", { credentials: "same-origin" });
  const data = await res.json().catch(() => null);
  if (res.status !== 200) {
    document.getElementById("error").textContent =
      (data && data.detail) || `cannot load (${res.status})` ;
    if (res.status === 401) document.getElementById("error").textContent += " (sign in on the annotation page first)";
    return;
  }
  const t = data.tasks;
  document.getElementById("tasks").textContent =
    `${t.done} of ${t.total} tasks done · ${data.labels} labels · ${t.overlap} tasks for two annotators`;
  const pos = data.helpfulness_on_screen;
  document.getElementById("position").textContent =
    `on screen: left better ${pos.left_better} · right better ${pos.right_better} · ` +
    `both good ${pos.both_good} · both not good ${pos.both_bad} (left/right order is random per task)`;
  const body = document.querySelector("#annotators tbody");
  for (const a of data.annotators) body.appendChild(row([a.name + (a.admin ? " (admin)" : ""), a.labeled, a.skipped, a.last_label_at || "-"]));
  const o = data.agreement.overall;
  document.getElementById("overall").textContent =
    `${o.tasks} doubly labeled pairs · helpfulness kappa ${fmt(o.helpfulness_kappa)} ` +
    `(raw agreement ${fmt(o.helpfulness_agreement)}) · acceptability kappa ${fmt(o.acceptability_kappa)}`;
  const pairs = document.querySelector("#pairs tbody");
  for (const p of data.agreement.pairs) pairs.appendChild(row([p.annotators.join(" & "), p.tasks, fmt(p.helpfulness_kappa)]));
  document.getElementById("summary").hidden = false;
});
