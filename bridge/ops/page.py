"""The operator page served at ``/``: one read-only HTML document, inline CSS and JS.

No build step and no external assets (it must work on a network with no Internet). The
script fetches ``status`` (relative, so the page also works behind a path prefix) every
second and draws it with ``textContent`` only: AE titles and ErrorComments come from
peers and servers and are never parsed as HTML. It shows what ``/status`` holds, so no
patient data.
"""

from __future__ import annotations

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dimse-bridge</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1d2330; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
  #updated { color: #667; font-size: .9em; }
  #error { color: #b00020; font-weight: 600; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .25em .6em; border-bottom: 1px solid #e3e6ec; }
  th { background: #f3f5f8; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .empty td { color: #889; font-style: italic; }
  .ready { color: #137333; font-weight: 600; }
  .not-ready { color: #b00020; font-weight: 600; }
  .success { color: #137333; } .warning { color: #9a6700; }
  .failure, .aborted { color: #b00020; } .cancel { color: #5f6368; }
  .bar { width: 12em; height: .9em; background: #e3e6ec; border-radius: .3em; }
  .bar > div { height: 100%; background: #1a73e8; border-radius: .3em; }
  .bar > div.failed { background: #d93025; }
</style>
</head>
<body>
<h1>dimse-bridge</h1>
<div><span id="updated">loading…</span> <span id="error"></span></div>

<h2>Backends</h2>
<table id="backends"><thead><tr><th>Name</th><th>URL</th><th>Ready</th><th>Reason</th>
</tr></thead><tbody></tbody></table>

<h2>Associations open now</h2>
<table id="associations"><thead><tr><th>Id</th><th>Calling AE</th><th>Called AE</th>
<th>Peer</th><th>Age</th></tr></thead><tbody></tbody></table>

<h2>Transfers running now</h2>
<table id="operations"><thead><tr><th>Id</th><th>Service</th><th>Calling AE</th>
<th>Peer</th><th>Done</th><th>Failed</th><th>Progress</th><th>MB</th><th>MB/s</th>
<th>ETA</th></tr></thead><tbody></tbody></table>

<h2>Last finished operations</h2>
<table id="finished"><thead><tr><th>Id</th><th>Service</th><th>Calling AE</th>
<th>Status</th><th>Done</th><th>Failed</th><th>Seconds</th><th>ErrorComment</th>
</tr></thead><tbody></tbody></table>

<h2 id="spool-title" hidden>Spool</h2>
<pre id="spool" hidden></pre>

<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function fill(id, items, columns, draw) {
  const body = document.querySelector("#" + id + " tbody");
  const rows = [];
  if (items.length === 0) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    const td = cell(tr, "none");
    td.colSpan = columns;
    rows.push(tr);
  }
  for (const item of items) {
    const tr = document.createElement("tr");
    draw(tr, item);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}
function seconds(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s.toFixed(1) + " s";
  const m = Math.floor(s / 60);
  return m + " min " + Math.round(s - 60 * m) + " s";
}
function bar(row, op) {
  const td = cell(row, "");
  const outer = document.createElement("div");
  outer.className = "bar";
  const inner = document.createElement("div");
  const fraction = op.total ? Math.min(1, op.done / op.total) : 0;
  inner.style.width = (100 * fraction).toFixed(1) + "%";
  if (op.failed) inner.className = "failed";
  outer.appendChild(inner);
  outer.title = op.total ? op.done + " of " + op.total : op.done + " so far";
  td.appendChild(outer);
}
function draw(status) {
  const peers = {};
  for (const a of status.associations) peers[a.id] = a.peer;
  fill("backends", status.backends, 4, (tr, b) => {
    cell(tr, b.name); cell(tr, b.url);
    cell(tr, b.ready ? "ready" : "not ready", b.ready ? "ready" : "not-ready");
    cell(tr, b.reason);
  });
  fill("associations", status.associations, 5, (tr, a) => {
    tr.dataset.association = a.id;
    cell(tr, a.id); cell(tr, a.calling_ae); cell(tr, a.called_ae); cell(tr, a.peer);
    cell(tr, seconds(a.age_s), "num");
  });
  fill("operations", status.operations, 10, (tr, op) => {
    tr.className = "transfer";
    tr.dataset.association = op.association;
    cell(tr, op.association); cell(tr, op.service, "service");
    cell(tr, op.calling_ae, "calling-ae"); cell(tr, peers[op.association] || "");
    cell(tr, op.total === null ? String(op.done) : op.done + "/" + op.total, "num done");
    cell(tr, op.failed, "num failed"); bar(tr, op);
    cell(tr, (op.bytes / 1e6).toFixed(1), "num");
    cell(tr, op.mb_s.toFixed(op.mb_s < 10 ? 2 : 1), "num mb-s");
    cell(tr, seconds(op.eta_s), "num eta");
  });
  fill("finished", status.finished, 8, (tr, f) => {
    tr.dataset.association = f.association;
    cell(tr, f.association); cell(tr, f.service); cell(tr, f.calling_ae);
    cell(tr, f.status === null ? f.category : f.status + " " + f.category, f.category);
    cell(tr, f.total === f.done ? f.done : f.done + "/" + f.total, "num");
    cell(tr, f.failed, "num"); cell(tr, f.seconds.toFixed(2), "num");
    cell(tr, f.error_comment);
  });
  const spool = document.getElementById("spool");
  const shown = status.spool !== null && status.spool !== undefined;
  spool.hidden = !shown;
  document.getElementById("spool-title").hidden = !shown;
  spool.textContent = shown ? JSON.stringify(status.spool, null, 2) : "";
}
async function refresh() {
  try {
    const response = await fetch("status", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    draw(await response.json());
    document.getElementById("error").textContent = "";
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("error").textContent = "cannot read /status: " + err.message;
  } finally {
    setTimeout(refresh, 1000);
  }
}
refresh();
</script>
</body>
</html>
"""
