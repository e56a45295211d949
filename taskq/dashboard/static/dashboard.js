// Live updates: the server says on /live (server-sent events) that something
// changed; the page fetches its own fragment (?fragment=1) again and swaps it in.
// The fragment is HTML the server rendered with autoescaping, so swapping it in
// runs no data as markup. No library, no CDN: the dashboard works offline.
(function () {
  "use strict";
  // Forms that need a second thought say so in data-confirm (no inline handlers:
  // the Content-Security-Policy allows only this file's script).
  document.addEventListener("submit", function (e) {
    var text = e.target.getAttribute && e.target.getAttribute("data-confirm");
    if (text && !window.confirm(text)) e.preventDefault();
  }, true);
  var live = document.getElementById("live");
  var lamp = document.getElementById("live-state");
  if (!live || !window.EventSource) return;
  var busy = false, again = false;

  function typing() {
    var el = document.activeElement;
    return el && live.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }

  function refresh() {
    if (busy || typing()) { again = true; return; }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("msg");
    url.searchParams.delete("ok");
    fetch(url.toString(), { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) live.innerHTML = html; })
      .catch(function () {})
      .then(function () {
        busy = false;
        if (again) { again = false; window.setTimeout(refresh, 250); }
      });
  }

  var source = new EventSource("/live");
  source.onopen = function () { lamp.classList.add("on"); };
  source.onerror = function () { lamp.classList.remove("on"); };
  source.onmessage = function () { refresh(); };
  // A form being filled in holds the refresh back; catch up when it is left.
  live.addEventListener("focusout", function () { if (again) { again = false; refresh(); } });
})();
