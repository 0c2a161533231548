// Room load curves: fetched as JSON (integer units) from the section's data-url and drawn with Chart.js.
(function () {
  "use strict";
  var section = document.getElementById("curves");
  if (!section || !window.Chart) {
    return;
  }
  var charts = {};
  var data = null;

  function series(meter, name, scale) {
    return meter[name].map(function (v) { return v === null ? null : v / scale; });
  }

  function draw(id, labels, label, values, color) {
    if (charts[id]) { charts[id].destroy(); }
    var canvas = document.getElementById(id);
    charts[id] = new window.Chart(canvas, {
      type: "line",
      data: { labels: labels, datasets: [{ label: label, data: values, borderColor: color, pointRadius: 0, borderWidth: 1.5, spanGaps: true }] },
      options: { animation: false, responsive: true, maintainAspectRatio: false, scales: { x: { ticks: { maxTicksLimit: 8 } } } }
    });
  }

  function show() {
    var picker = document.getElementById("curve-meter");
    var ids = Object.keys(data.meters);
    var chosen = picker ? picker.value : ids[0];
    var meter = data.meters[chosen];
    var empty = !meter || meter.labels.length === 0;
    document.getElementById("curve-empty").hidden = !empty;
    if (empty) { return; }
    var d = section.dataset;
    draw("chart-power", meter.labels, d.labelPower, series(meter, "power_dw", 10), "#e85d04");
    draw("chart-voltage", meter.labels, d.labelVoltage, series(meter, "voltage_dv", 10), "#3a86ff");
    draw("chart-current", meter.labels, d.labelCurrent, series(meter, "current_ma", 1000), "#2a9d8f");
  }

  fetch(section.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
    .then(function (response) { return response.ok ? response.json() : Promise.reject(response.status); })
    .then(function (body) {
      data = body;
      show();
      var picker = document.getElementById("curve-meter");
      if (picker) { picker.addEventListener("change", show); }
    })
    .catch(function () { document.getElementById("curve-empty").hidden = false; });
})();
