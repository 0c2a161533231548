// PowerGate console behaviour (loaded from /static: the CSP allows no inline script).
// - [data-autosubmit] selects submit their form when changed (the monitoring filters).
// - An element with hx-trigger "pg-refresh" and data-refresh-s="N" is re-fetched every N seconds, only while
//   the tab is visible (htmx trigger filters would need eval, which the CSP forbids).
// - After an operation form is answered, every operation form gets a fresh idempotency key, and the commands
//   table is refreshed so the new commands show their progress.
(function () {
  "use strict";

  function uuid4() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") {
      return window.crypto.randomUUID();
    }
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    var hex = Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
    return hex.slice(0, 8) + "-" + hex.slice(8, 12) + "-" + hex.slice(12, 16) + "-" + hex.slice(16, 20) + "-" + hex.slice(20);
  }

  function refreshTick() {
    var visible = document.visibilityState === "visible";
    var live = document.getElementById("live-status");
    if (live) {
      live.textContent = visible ? live.dataset.on : live.dataset.off;
      live.classList.toggle("off", !visible);
    }
    if (!visible || !window.htmx) {
      return;
    }
    var now = Date.now();
    document.querySelectorAll("[data-refresh-s]").forEach(function (el) {
      var every = parseFloat(el.dataset.refreshS) * 1000;
      var last = parseFloat(el.dataset.refreshedAt || "0");
      if (!last) {
        el.dataset.refreshedAt = String(now);
      } else if (now - last >= every) {
        el.dataset.refreshedAt = String(now);
        window.htmx.trigger(el, "pg-refresh");
      }
    });
  }

  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target && target.matches && target.matches("[data-autosubmit]") && target.form) {
      if (target.name === "site" || target.name === "building") {
        var floor = target.form.querySelector("select[name=floor]");
        if (floor) { floor.value = ""; }
      }
      if (target.name === "site") {
        var building = target.form.querySelector("select[name=building]");
        if (building) { building.value = ""; }
      }
      target.form.submit();
    }
  });

  // The answered form itself may be gone (the panel replaced it), so listen where the answer lands.
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail && event.detail.target;
    if (!target || target.id !== "op-panel") {
      return;
    }
    document.querySelectorAll("form.op input[name=idempotency_key]").forEach(function (input) {
      input.value = uuid4();
    });
    var commands = document.getElementById("commands");
    if (commands && window.htmx && target.querySelector(".panel.ok, .panel.error")) {
      window.htmx.trigger(commands, "pg-refresh");
    }
  });

  document.addEventListener("visibilitychange", refreshTick);
  window.setInterval(refreshTick, 1000);
})();
