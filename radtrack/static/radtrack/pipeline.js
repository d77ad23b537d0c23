/* Live progress (the pipeline page, the worklist's processing line): while something is
   running, fetch each box's fragment (data-poll-url) every few seconds and swap it in.
   A box stops when its fragment says nothing is active, or on an error. */
(function () {
  "use strict";
  function live(box) {
    var seconds = parseInt(box.dataset.pollSeconds, 10) || 3;
    function active() {
      var inner = box.querySelector("[data-active]");
      return inner && inner.dataset.active === "true";
    }
    function poll() {
      if (!active() || document.hidden) { schedule(); return; }
      fetch(box.dataset.pollUrl, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.text();
        })
        .then(function (html) { box.innerHTML = html; schedule(); })
        .catch(function (error) {
          box.insertAdjacentHTML("afterbegin",
            '<p class="notice notice--error" role="alert">Live updates stopped: ' +
            String(error.message).replace(/[<>&]/g, "") + '. Reload the page to try again.</p>');
        });
    }
    function schedule() { if (active()) { window.setTimeout(poll, seconds * 1000); } }
    schedule();
  }
  Array.prototype.forEach.call(document.querySelectorAll("[data-poll-url]"), live);
})();
