// hookgate dashboard: the few things HTML cannot do by itself. Served from /ui/assets/ui.js
// (no inline script: the pages' Content-Security-Policy forbids it).
"use strict";

// Live tail: new rows pushed by the server (Server-Sent Events) are put on top of the list.
// The server renders and escapes each row; this only inserts it.
(function liveTail() {
  const table = document.getElementById("events-body");
  const status = document.getElementById("tail-status");
  if (!table || !status || !table.dataset.stream || !window.EventSource) {
    return;
  }
  const source = new EventSource(table.dataset.stream);
  source.addEventListener("open", () => {
    status.textContent = "live: connected";
    status.className = "tail on";
  });
  source.addEventListener("error", () => {
    status.textContent = "live: reconnecting…";
    status.className = "tail off";
  });
  source.addEventListener("row", (message) => {
    const empty = document.getElementById("no-events");
    if (empty) {
      empty.remove();
    }
    const template = document.createElement("template");
    template.innerHTML = message.data;
    const row = template.content.firstElementChild;
    if (row) {
      row.classList.add("new");
      table.prepend(row);
    }
  });
  source.addEventListener("gap", () => {
    status.textContent = "live: more events arrived than shown; reload for all";
  });
})();

// Buttons marked data-confirm ask before their form is sent.
document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const text = (button && button.dataset.confirm) || event.target.dataset.confirm;
  if (text && !window.confirm(text)) {
    event.preventDefault();
  }
});
