// Tariff version form: show only the price fields of the chosen pricing (flat / time of use). Without
// JavaScript every fieldset stays visible and the server ignores the fields of the other pricing.
(function () {
  "use strict";
  var radios = document.querySelectorAll('input[name="pricing"]');
  if (!radios.length) { return; }
  function sync() {
    var chosen = document.querySelector('input[name="pricing"]:checked');
    var value = chosen ? chosen.value : "";
    document.querySelectorAll("[data-b-pricing]").forEach(function (fieldset) {
      fieldset.hidden = fieldset.getAttribute("data-b-pricing").split(" ").indexOf(value) < 0;
    });
  }
  radios.forEach(function (radio) { radio.addEventListener("change", sync); });
  sync();
}());
