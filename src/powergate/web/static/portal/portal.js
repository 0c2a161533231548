// PowerGate tenant portal: draws the usage curves (Chart.js) from data-* attributes and wires the print
// buttons. No inline script anywhere (the Content-Security-Policy allows scripts from this site only).
(function () {
  "use strict";

  function numbers(text) {
    try { return JSON.parse(text || "[]"); } catch (e) { return []; }
  }

  function drawCharts() {
    if (typeof window.Chart === "undefined") { return; }
    document.querySelectorAll("canvas.usage-chart").forEach(function (canvas) {
      if (canvas.dataset.drawn) { return; }
      canvas.dataset.drawn = "1";
      var labels = numbers(canvas.dataset.labels);
      var energyKwh = numbers(canvas.dataset.energy).map(function (wh) { return wh / 1000; });
      var costYuan = numbers(canvas.dataset.cost).map(function (micros) { return micros / 1000000; });
      new window.Chart(canvas, {
        type: "bar",
        data: {
          labels: labels,
          datasets: [
            { label: canvas.dataset.energyLabel, data: energyKwh, backgroundColor: "#0a5bd3", yAxisID: "energy" },
            { label: canvas.dataset.costLabel, data: costYuan, type: "line", borderColor: "#e07a00",
              backgroundColor: "#e07a00", pointRadius: 0, tension: 0.25, yAxisID: "cost" }
          ]
        },
        options: {
          responsive: true, maintainAspectRatio: false, animation: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            energy: { position: "left", beginAtZero: true },
            cost: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } },
            x: { ticks: { autoSkip: true, maxRotation: 0 } }
          },
          plugins: { legend: { position: "bottom" } }
        }
      });
    });
  }

  function wirePrint() {
    document.querySelectorAll("[data-print]").forEach(function (button) {
      button.addEventListener("click", function () { window.print(); });
    });
  }

  document.addEventListener("DOMContentLoaded", function () { drawCharts(); wirePrint(); });
})();
