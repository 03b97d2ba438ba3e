// The console's small behaviours, without inline scripts (the pages' CSP allows only 'self'): countdowns to a
// burst's deadline, local times, and the CSRF token on htmx requests.
(function () {
  "use strict";
  const token = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
  document.addEventListener("htmx:configRequest", (event) => { event.detail.headers["X-CSRFToken"] = token(); });

  const skew = {};  // server clock minus this clock, per countdown (its data-now)
  function tick() {
    document.querySelectorAll("[data-deadline]").forEach((el) => {
      const now = parseFloat(el.dataset.now || "0");
      if (now && skew[el.dataset.now] === undefined) skew[el.dataset.now] = now - Date.now() / 1000;
      const left = parseFloat(el.dataset.deadline) - (Date.now() / 1000 + (skew[el.dataset.now] || 0));
      el.textContent = left > 0 ? `${Math.ceil(left)} s` : "agora";
    });
    document.querySelectorAll("time[data-at]:not([data-done])").forEach((el) => {
      const at = new Date(parseFloat(el.dataset.at) * 1000);
      el.textContent = at.toLocaleString("pt-BR", { dateStyle: "short", timeStyle: "short" });
      el.dataset.done = "1";
    });
  }
  document.addEventListener("DOMContentLoaded", tick);
  document.addEventListener("htmx:afterSwap", tick);
  setInterval(tick, 500);
  window.consoleToken = token;
})();
