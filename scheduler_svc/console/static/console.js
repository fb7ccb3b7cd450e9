// Live console pages: server-sent events from /ui/events refresh the page's live
// fragments through htmx. Each live element carries
//   data-live  hx-get="<its fragment>"  hx-trigger="live"  hx-swap="outerHTML"
// and, when it shows particular jobs only, data-jobs="<id> <id> ...".
// The stream is closed while the tab is hidden; on its return every fragment is
// refreshed once, since changes went unheard meanwhile.
(function () {
  "use strict";

  var EVENTS_URL = "/ui/events";
  var source = null;
  var broken = false; // the stream failed since it last opened: changes may be lost
  var again = new Set(); // fragments (hx-get) that changed while being refreshed

  function liveElements() {
    return Array.prototype.slice.call(document.querySelectorAll("[data-live]"));
  }

  function refresh(el) {
    if (el.classList.contains("htmx-request")) {
      // The answer under way may predate the change: ask again once it is in.
      again.add(el.getAttribute("hx-get"));
      return;
    }
    window.htmx.trigger(el, "live");
  }

  function refreshAll() {
    liveElements().forEach(refresh);
  }

  function shows(el, jobs) {
    var own = (el.getAttribute("data-jobs") || "").split(/\s+/).filter(Boolean);
    if (own.length === 0 || jobs === null) {
      return true;
    }
    var changed = new Set(jobs.map(String));
    return own.some(function (id) {
      return changed.has(id);
    });
  }

  function changed(event) {
    var jobs = null;
    try {
      var data = JSON.parse(event.data);
      jobs = Array.isArray(data.jobs) ? data.jobs : null;
    } catch (_) {
      jobs = null; // unreadable: refresh everything rather than miss a change
    }
    liveElements().forEach(function (el) {
      if (shows(el, jobs)) {
        refresh(el);
      }
    });
  }

  function open() {
    if (source !== null) {
      return;
    }
    source = new EventSource(EVENTS_URL);
    source.addEventListener("change", changed);
    source.addEventListener("open", function () {
      // The browser opened the stream again by itself (the server went away, perhaps
      // to another replica behind the load balancer): what changed meanwhile is unknown.
      if (broken) {
        broken = false;
        refreshAll();
      }
    });
    source.addEventListener("error", function () {
      broken = true;
    });
  }

  function close() {
    if (source !== null) {
      source.close();
      source = null;
    }
    broken = false;
  }

  function visibilityChanged() {
    if (document.hidden) {
      close();
    } else if (source === null) {
      open();
      refreshAll();
    }
  }

  function start() {
    if (!window.EventSource || !window.htmx || liveElements().length === 0) {
      return;
    }
    document.addEventListener("htmx:afterRequest", function () {
      if (again.size === 0) {
        return;
      }
      var wanted = again;
      again = new Set();
      liveElements().forEach(function (el) {
        if (wanted.has(el.getAttribute("hx-get"))) {
          refresh(el);
        }
      });
    });
    document.addEventListener("visibilitychange", visibilityChanged);
    if (!document.hidden) {
      open();
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
