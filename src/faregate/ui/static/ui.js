// faregate admin UI: the only script (the CSP forbids inline ones). No framework.
// 1. The browser's time zone, in a cookie the server reads for day and hour buckets.
// 2. Copy buttons (data-copy="<id of an input>").
// 3. Live tail on the logs page (a table with data-tail="<url>"): polls one query.
(function () {
  "use strict";

  function setZone() {
    var zone;
    try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
    if (!zone) { return; }
    var shown = document.body.getAttribute("data-tz");
    var had = document.cookie.split("; ").some(function (c) { return c.indexOf("faregate_tz=") === 0; });
    document.cookie = "faregate_tz=" + encodeURIComponent(zone) + "; path=/ui; SameSite=Strict; max-age=31536000";
    // First visit: the page was drawn in UTC; draw it again in the viewer's zone (once).
    if (!had && shown !== zone && document.querySelector("[data-zoned]")) { window.location.reload(); }
  }

  function copyButtons() {
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var input = document.getElementById(button.getAttribute("data-copy"));
        if (!input) { return; }
        var done = function () { button.textContent = "Copied"; };
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(input.value).then(done, function () { input.select(); });
        } else {
          input.select();
          try { document.execCommand("copy"); done(); } catch (e) { /* the text stays selected */ }
        }
      });
    });
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;   // text, never HTML: what a row holds cannot become markup
    if (cls) { td.className = cls; }
    row.appendChild(td);
    return td;
  }

  function liveTail() {
    var table = document.querySelector("table[data-tail]");
    var toggle = document.getElementById("tail-toggle");
    if (!table || !toggle) { return; }
    var body = table.querySelector("tbody");
    var status = document.getElementById("tail-status");
    var timer = null;
    var after = table.getAttribute("data-after") || "";
    function poll() {
      var url = table.getAttribute("data-tail") + (table.getAttribute("data-tail").indexOf("?") < 0 ? "?" : "&") +
        "after=" + encodeURIComponent(after);
      fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { if (!r.ok) { throw new Error(String(r.status)); } return r.json(); })
        .then(function (data) {
          if (data.rows.length) {
            var none = body.querySelector("tr.none");
            if (none) { body.removeChild(none); }
          }
          data.rows.slice().reverse().forEach(function (r) {
            var tr = document.createElement("tr");
            var first = cell(tr, "");
            var a = document.createElement("a");
            a.href = r.href; a.textContent = r.time; first.appendChild(a);
            cell(tr, r.key); cell(tr, r.model); cell(tr, r.status);
            cell(tr, r.tokens, "num"); cell(tr, r.cost, "num"); cell(tr, r.latency, "num");
            body.insertBefore(tr, body.firstChild);
          });
          if (data.after) { after = data.after; }
          if (status) {
            status.textContent = data.full ? "More new rows than shown: reload the page." :
              "Live: " + data.rows.length + " new at " + new Date().toLocaleTimeString();
          }
        })
        .catch(function (e) { if (status) { status.textContent = "Live tail paused: " + e.message; } });
    }
    toggle.addEventListener("click", function () {
      if (timer) {
        clearInterval(timer); timer = null; toggle.textContent = "Start live tail";
        toggle.setAttribute("aria-pressed", "false");
        if (status) { status.textContent = "Stopped."; }
      } else {
        poll(); timer = setInterval(poll, 3000); toggle.textContent = "Stop live tail";
        toggle.setAttribute("aria-pressed", "true");
      }
    });
  }

  function confirmForms() {
    // Forms with data-confirm ask first (the delete pages are a confirmation step anyway).
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (e) {
        if (!window.confirm(form.getAttribute("data-confirm"))) { e.preventDefault(); }
      });
    });
  }

  function init() { setZone(); copyButtons(); liveTail(); confirmForms(); }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); }
  else { init(); }
})();
