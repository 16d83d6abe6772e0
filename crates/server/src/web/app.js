// Forms marked data-live post in the background and replace the page's
// live region with the server's answer, so lists update without a reload.
// Without this script every form still works by a plain post.
(function () {
  "use strict";
  function live() { return document.getElementById("live"); }
  async function submit(form) {
    const region = live();
    if (!region) { form.submit(); return; }
    const body = new URLSearchParams(new FormData(form));
    const resp = await fetch(form.action, {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "X-Requested-With": "fetch", "Content-Type": "application/x-www-form-urlencoded" },
    });
    // Signed out meanwhile: to the sign-in page, which brings the person back.
    if (resp.redirected) { window.location.assign(resp.url); return; }
    const text = await resp.text();
    if (!resp.ok) {
      // Show the refusal (already decided, stale form, too many attempts) in place.
      const alert = new DOMParser().parseFromString(text, "text/html").querySelector('[role="alert"]');
      const notice = document.getElementById("notice");
      if (notice) {
        notice.className = "error";
        notice.textContent = alert ? alert.textContent : "The request failed (" + resp.status + "); reload the page.";
        notice.focus({ preventScroll: true });
      }
      return;
    }
    region.innerHTML = text;
    const notice = document.getElementById("notice");
    if (notice) { notice.focus({ preventScroll: true }); }
  }
  document.addEventListener("submit", function (ev) {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute("data-live")) { return; }
    ev.preventDefault();
    submit(form).catch(function () { form.submit(); });
  });
  // The approvals inbox also picks up new requests on its own.
  if (window.location.pathname === "/approvals") {
    setInterval(async function () {
      const region = live();
      // Not while a button or field in the list has the focus: the list
      // would move under the person's hand.
      const focused = document.activeElement;
      if (!region || (focused && region.contains(focused) && focused.matches("button, input, a"))) { return; }
      // The same page of the inbox the person is on.
      const resp = await fetch("/approvals" + window.location.search, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } });
      if (resp.ok && !resp.redirected) { region.innerHTML = await resp.text(); }
    }, 3000);
  }
})();
