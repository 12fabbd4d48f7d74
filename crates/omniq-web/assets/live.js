// OmniQ dashboard: keeps the parts of a page marked data-live up to date.
// The server sends a "change" event on /events when tasks may have changed;
// each marked part is then fetched again from /fragments/<its data-live>.
(function () {
  "use strict";
  var parts = document.querySelectorAll("[data-live]");
  if (!parts.length || !window.EventSource) return;
  var prefix = document.body.getAttribute("data-prefix") || "";
  var busy = false, again = false;
  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    var loads = Array.prototype.map.call(parts, function (part) {
      return fetch(prefix + "/fragments/" + part.getAttribute("data-live"), { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null) part.innerHTML = html; });
    });
    Promise.all(loads).catch(function () {}).then(function () {
      busy = false;
      if (again) { again = false; refresh(); }
    });
  }
  var events = new EventSource(prefix + "/events");
  events.addEventListener("change", refresh);
})();
