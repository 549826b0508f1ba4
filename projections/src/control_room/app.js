// The control room: follows /v1/control-room/stream (one EventSource; the browser reconnects
// by itself) and renders each snapshot. A figure that is null is shown with the reason the
// server gives in `unavailable`, never as zero.
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];
const fmt = (n, digits = 0) => n.toLocaleString("en", { maximumFractionDigits: digits, minimumFractionDigits: digits });

function unavailable(el, why) {
  el.textContent = "unavailable: " + (why || "no data");
  el.className = "unavailable";
}

function figure(id, value, why, render) {
  const el = $(id);
  if (value === null || value === undefined) return unavailable(el, why);
  el.className = "";
  el.textContent = render(value);
}

// Fills a two-column table from an object; `why` when the object is null.
function keyed(id, obj, why, label) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  if (obj === null || obj === undefined) {
    const td = body.insertRow().insertCell();
    td.colSpan = 2;
    unavailable(td, why);
    return;
  }
  for (const [key, value] of Object.entries(obj)) {
    const row = body.insertRow();
    row.dataset.key = key;
    row.insertCell().outerHTML = "<th></th>";
    row.cells[0].textContent = label ? label(key) : key;
    row.insertCell().textContent = fmt(value);
  }
}

function stock(rows, why, truncated) {
  const body = $("stock").tBodies[0];
  body.replaceChildren();
  $("stock-note").textContent = truncated ? "showing the first SKUs only" : "";
  if (rows === null || rows === undefined) {
    const td = body.insertRow().insertCell();
    td.colSpan = 5;
    return unavailable(td, why);
  }
  if (rows.length === 0) $("stock-note").textContent = "no stock set yet (orderpipe stock set SKU QTY)";
  for (const s of rows) {
    const row = body.insertRow();
    row.dataset.sku = s.sku;
    row.classList.toggle("soldout", s.available === 0);
    const th = document.createElement("th");
    th.textContent = s.sku;
    row.appendChild(th);
    for (const k of ["available", "reserved", "sold"]) {
      const td = row.insertCell();
      td.className = k;
      td.textContent = fmt(s[k]);
    }
    const total = Math.max(1, s.available + s.reserved + s.sold);
    const bar = row.insertCell();
    bar.className = "bar-cell";
    bar.innerHTML = '<div class="bar"><i class="s"></i><i class="r"></i><i class="a"></i></div>';
    const [sold, res, avail] = bar.querySelectorAll("i");
    sold.style.width = (100 * s.sold / total) + "%";
    res.style.width = (100 * s.reserved / total) + "%";
    avail.style.width = (100 * s.available / total) + "%";
  }
}

function chart() {
  const c = $("rate-history");
  const w = (c.width = c.clientWidth * devicePixelRatio);
  const h = (c.height = 60 * devicePixelRatio);
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const max = Math.max(1, ...history);
  const step = w / 120;
  g.fillStyle = "#58a6ff";
  history.forEach((v, i) => {
    const bh = (v / max) * (h - 2);
    g.fillRect(w - (history.length - i) * step, h - bh, Math.max(1, step - 1), bh);
  });
}

function render(s) {
  const why = s.unavailable || {};
  figure("acked-per-second", s.acked_per_second, why.acked_per_second, (v) => fmt(v, 1));
  figure("refused-per-second", s.refused_per_second, why.refused_per_second, (v) => fmt(v, 1));
  figure("acked-total", s.acked_total, why.acked_total, fmt);
  figure("ack-p50", s.ack_latency, why.ack_latency, (q) => "≤ " + fmt(q.p50_ms, 1) + " ms");
  figure("ack-p99", s.ack_latency, why.ack_latency, (q) => "≤ " + fmt(q.p99_ms, 1) + " ms");
  figure("e2e", null, why.end_to_end_latency, String);
  keyed("outcomes", s.outcomes, why.outcomes, (k) => k.replace("rejected:", "rejected · ").replaceAll("_", " "));
  keyed("lag", s.lag, why.lag);
  keyed("dead-letters", s.dead_letters, why.dead_letters);
  figure("breaker", s.breaker, why.breaker, String);
  if (s.breaker) $("breaker").className = s.breaker;
  stock(s.stock, why.stock, s.stock_truncated);
  if (typeof s.acked_per_second === "number") {
    history.push(s.acked_per_second);
    if (history.length > 120) history.shift();
    chart();
  }
  const failed = (s.sources || []).filter((x) => x.error);
  $("sources").textContent = "metrics from " + (s.sources || []).map((x) => x.source).join(", ") +
    (failed.length ? " — unreachable: " + failed.map((x) => x.source + " (" + x.error + ")").join(", ") : "") +
    " · views: keyspace " + s.keyspace + " · rates over the last " + (s.window_seconds ?? "–") + " s" +
    " · counts since the processes started";
  $("status").textContent = "live · " + new Date(s.at).toLocaleTimeString();
  $("status").className = "status live";
  document.body.dataset.snapshots = String(Number(document.body.dataset.snapshots || 0) + 1);
}

const source = new EventSource("/v1/control-room/stream");
source.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
source.onerror = () => {
  $("status").textContent = "disconnected — retrying…";
  $("status").className = "status down";
};
