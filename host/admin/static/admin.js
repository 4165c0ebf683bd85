// Plugin Host admin UI: the little that needs a script (everything works without it).
// - forms with data-confirm ask first (disable, uninstall);
// - the plugin table refreshes its rows every few seconds, so states change in place after an action.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset ? form.dataset.confirm : undefined;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

function refreshTable(table) {
  const seconds = Number(table.dataset.refresh);
  if (!(seconds > 0)) {
    return;
  }
  window.setInterval(async () => {
    if (document.hidden || document.activeElement && table.contains(document.activeElement)) {
      return;  // do not move a row from under the keyboard focus
    }
    try {
      const response = await fetch(window.location.pathname, {credentials: "same-origin",
                                                              headers: {"Accept": "text/html"}});
      if (!response.ok || response.redirected) {
        return;  // logged out or the host is down: leave the page as it is
      }
      const html = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = html.querySelector("#" + table.id + " tbody");
      const body = table.querySelector("tbody");
      if (fresh && body && fresh.innerHTML !== body.innerHTML) {
        body.replaceWith(document.importNode(fresh, true));
      }
    } catch (error) {
      // the host restarts or the network blinked: try again next time
    }
  }, seconds * 1000);
}

document.querySelectorAll("table[data-refresh]").forEach(refreshTable);
