// Edge Capsules kiosk page: progressive enhancement of a plain GET form.
// Without JavaScript the form submits to / and the server renders the results (and a
// <noscript> refresh returns to the start screen). With it: results load in place, an idle
// timer clears the query, and an on-screen keyboard is available. No network but this server.
"use strict";
(function () {
  const body = document.body;
  const form = document.getElementById("search");
  const input = document.getElementById("q");
  const results = document.getElementById("results");
  const keyboard = document.getElementById("keyboard");
  const toggle = document.getElementById("keyboard-toggle");
  const idleResetMs = Math.max(10, parseInt(body.dataset.idleReset || "90", 10)) * 1000;
  const MESSAGES = {
    busy: "Busy. Please try again in a moment.",
    offline: "The service is not answering. Please ask staff.",
  };
  let idleTimer = null;
  let inFlight = null;

  function state(kind, text) {
    const p = document.createElement("p");
    p.className = "state state-" + kind;
    p.setAttribute("role", "status");
    p.textContent = text;
    results.replaceChildren(p);
  }

  async function search(query) {
    if (inFlight) inFlight.abort();
    const controller = new AbortController();
    inFlight = controller;
    results.setAttribute("aria-busy", "true");
    const url = "/?_fragment=1&q=" + encodeURIComponent(query);
    try {
      const response = await fetch(url, { signal: controller.signal, headers: { Accept: "text/html" } });
      const html = await response.text();
      if (controller !== inFlight) return;
      // The fragment is server-rendered and escaped there; it carries every visitor state,
      // including 503 "busy" and 410 "expired".
      results.innerHTML = html;
      history.replaceState(null, "", "/?q=" + encodeURIComponent(query));
    } catch (err) {
      if (err.name === "AbortError") return;
      state("busy", MESSAGES.offline);
    } finally {
      if (controller === inFlight) {
        inFlight = null;
        results.setAttribute("aria-busy", "false");
      }
    }
  }

  function reset() {
    if (inFlight) inFlight.abort();
    input.value = "";
    results.replaceChildren();
    history.replaceState(null, "", "/");
    window.scrollTo(0, 0);
    input.focus();
  }

  function touched() {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(reset, idleResetMs);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const query = input.value.trim();
    if (!query) { input.focus(); return; }
    search(query);
  });
  for (const name of ["pointerdown", "keydown", "input", "scroll", "touchstart"]) {
    window.addEventListener(name, touched, { passive: true });
  }

  // On-screen keyboard: codes and part numbers need digits and '-', '.', '_' as much as letters.
  const ROWS = ["1234567890-", "QWERTYUIOP_", "ASDFGHJKL.", "ZXCVBNM/"];
  function key(label, action, wide) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    if (wide) b.className = "wide";
    b.addEventListener("click", function () { action(); input.focus(); touched(); });
    return b;
  }
  function type(text) {
    const start = input.selectionStart ?? input.value.length;
    const end = input.selectionEnd ?? input.value.length;
    input.value = input.value.slice(0, start) + text + input.value.slice(end);
    input.setSelectionRange(start + text.length, start + text.length);
  }
  function buildKeyboard() {
    for (const row of ROWS) {
      const div = document.createElement("div");
      div.className = "krow";
      for (const ch of row) div.appendChild(key(ch, function () { type(ch); }));
      keyboard.appendChild(div);
    }
    const last = document.createElement("div");
    last.className = "krow";
    last.appendChild(key("Space", function () { type(" "); }, true));
    last.appendChild(key("⌫ Delete", function () {
      const pos = input.selectionStart ?? input.value.length;
      if (pos > 0) { input.value = input.value.slice(0, pos - 1) + input.value.slice(pos); input.setSelectionRange(pos - 1, pos - 1); }
    }, true));
    last.appendChild(key("Clear", reset, true));
    last.appendChild(key("Search", function () { form.requestSubmit(); }, true));
    keyboard.appendChild(last);
  }
  function showKeyboard(on) {
    keyboard.hidden = !on;
    toggle.setAttribute("aria-pressed", on ? "true" : "false");
    toggle.textContent = on ? "Hide keyboard" : "Keyboard";
  }
  buildKeyboard();
  toggle.hidden = false;
  toggle.addEventListener("click", function () { showKeyboard(keyboard.hidden); });
  showKeyboard(body.dataset.keyboard === "on" || new URLSearchParams(location.search).get("keyboard") === "1");

  touched();
  if (!input.value) input.focus();
})();
