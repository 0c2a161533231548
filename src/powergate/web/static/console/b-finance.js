// Finance page: income by day / month / year (stacked bars per channel) and by channel (doughnut), drawn with
// the vendored Chart.js from /console/finance/income.json. Amounts arrive as integer fen and are shown in yuan.
(function () {
  "use strict";
  var canvas = document.getElementById("b-income-chart");
  var pie = document.getElementById("b-channel-chart");
  var totals = document.getElementById("b-income-totals");
  if (!canvas || typeof Chart === "undefined") { return; }
  var palette = ["#1f5fbf", "#2a9d8f", "#e85d04", "#b5179e", "#7a4cc2", "#6b7385"];
  var charts = [];
  var lang = document.body.getAttribute("data-lang") || "zh-CN";
  var grouped = new Intl.NumberFormat(lang, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  var names = {};
  try { names = JSON.parse(canvas.getAttribute("data-channels") || "{}"); } catch (e) { names = {}; }
  // Display only: the server's figures are integer fen; "¥1,234.50" like the rest of the console.
  var money = { format: function (value) { return (value < 0 ? "-¥" : "¥") + grouped.format(Math.abs(value)); } };
  function yuan(fen) { return fen / 100; }
  function label(channel) { return names[channel] || channel; }

  function draw(period) {
    var url = canvas.getAttribute("data-b-income") + "&period=" + encodeURIComponent(period);
    var params = new URLSearchParams(window.location.search);
    if (params.get("from") && period === "day") { url += "&from=" + encodeURIComponent(params.get("from")); }
    if (params.get("to")) { url += "&to=" + encodeURIComponent(params.get("to")); }
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
      .then(function (data) {
        charts.forEach(function (c) { c.destroy(); });
        charts = [];
        var channels = Object.keys(data.net_fen);
        charts.push(new Chart(canvas, {
          type: "bar",
          data: {
            labels: data.labels,
            datasets: channels.map(function (ch, i) {
              return { label: label(ch), data: data.net_fen[ch].map(yuan), backgroundColor: palette[i % palette.length] };
            })
          },
          options: {
            maintainAspectRatio: false, animation: false,
            scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: canvas.getAttribute("data-label-net") } } },
            plugins: { tooltip: { callbacks: { label: function (c) { return c.dataset.label + ": " + money.format(c.parsed.y); } } } }
          }
        }));
        if (pie) {
          charts.push(new Chart(pie, {
            type: "doughnut",
            data: {
              labels: channels.map(label),
              datasets: [{ data: channels.map(function (ch) { return yuan(data.by_channel_fen[ch]); }),
                           backgroundColor: channels.map(function (_, i) { return palette[i % palette.length]; }) }]
            },
            options: { maintainAspectRatio: false, animation: false }
          }));
        }
        if (totals) {
          totals.textContent = totals.getAttribute("data-income") + " " + money.format(yuan(data.income_fen)) + " · " +
            totals.getAttribute("data-refunds") + " " + money.format(yuan(data.refunds_fen)) + " · " +
            totals.getAttribute("data-net") + " " + money.format(yuan(data.net_total_fen));
        }
      })
      .catch(function () { if (totals) { totals.textContent = "—"; } });
  }

  document.querySelectorAll("[data-b-period]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      document.querySelectorAll("[data-b-period]").forEach(function (l) { l.classList.remove("active"); });
      link.classList.add("active");
      draw(link.getAttribute("data-b-period"));
    });
  });
  draw("day");
}());
