// flotilla's status page: local times, filters, live updates, "Sync now" and the comparison
// with the cluster. No framework; served from the agent's binary.
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const page = document.body.dataset.page;
  const csrf = ($('meta[name="flotilla-csrf"]') || {}).content || "";
  document.documentElement.classList.add("js");

  // Times arrive in UTC; show them in the browser's time zone.
  function localTimes(root) {
    for (const t of $$("time[datetime]", root)) {
      const d = new Date(t.getAttribute("datetime"));
      if (isNaN(d)) continue;
      t.title = t.getAttribute("datetime");
      t.textContent = d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
    }
  }

  // The fleet page's filters: applied here at once, kept in the address.
  function filters() {
    const tenant = $("#f-tenant"), result = $("#f-result"), q = $("#f-q");
    if (!tenant) return;
    const want = { tenant: tenant.value, result: result.value, q: q.value.trim().toLowerCase() };
    for (const group of $$("section.group")) {
      let any = false;
      for (const unit of $$("tbody.unit", group)) {
        const ok = (!want.tenant || unit.dataset.tenant === want.tenant) &&
          (!want.result || unit.dataset.result === want.result) &&
          (!want.q || unit.dataset.text.includes(want.q));
        unit.hidden = !ok;
        any = any || ok;
      }
      const empty = $$("tbody.unit", group).length === 0;
      group.hidden = !(any || (empty && !want.result && !want.q &&
        (!want.tenant || group.dataset.tenant === want.tenant)));
    }
    for (const c of $$(".count")) c.classList.toggle("active", c.dataset.result === want.result);
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries({ tenant: tenant.value, result: result.value, q: q.value })) {
      if (v) params.set(k, v);
    }
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
  }

  // The live part again, as the server has it now; a change told while one is under way
  // brings another.
  let refreshing = false, again = false, syncing = false;
  async function refresh() {
    const live = $("#live");
    if (!live) return;
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    try {
      const res = await fetch(location.href, { headers: { "X-Flotilla-Fragment": "live" } });
      if (res.status === 401) {
        location.reload(); // the session ended: the login form
        return;
      }
      if (res.ok) {
        live.innerHTML = await res.text();
        localTimes(live);
        filters();
        for (const b of $$("button[data-sync]", live)) b.disabled = syncing;
      }
    } catch (e) {
      /* the agent restarts: the next event brings the page back */
    } finally {
      refreshing = false;
    }
    if (again) {
      again = false;
      refresh();
    }
  }

  // Server-sent events say when the agent's state changed; without them, a poll.
  let polling = null;
  function poll() {
    if (!polling) polling = setInterval(refresh, 10000);
  }
  function listen() {
    if (!window.EventSource) return poll();
    const events = new EventSource("/ui/events");
    events.addEventListener("status", refresh);
    events.addEventListener("open", refresh); // what changed before it was open
    events.addEventListener("error", () => {
      if (events.readyState === EventSource.CLOSED) {
        refresh();
        poll();
      }
    });
  }

  // A unit's comparison with the cluster, loaded on demand; only the latest answer is shown.
  let asked = 0;
  async function inspect() {
    const section = $("#inspect"), out = $("#inspection");
    if (!section || !out) return;
    const mine = ++asked;
    out.innerHTML = '<p class="note">Comparing with the cluster…</p>';
    section.dataset.state = "loading";
    let html, error = null;
    try {
      const res = await fetch(section.dataset.src);
      if (res.ok) html = await res.text();
      else error = await errorOf(res);
    } catch (e) {
      error = "The agent did not answer: " + e;
    }
    if (mine !== asked) return;
    if (error === null) {
      out.innerHTML = html;
    } else {
      out.innerHTML = '<div class="alert"><pre></pre></div>';
      $("pre", out).textContent = error;
    }
    localTimes(out);
    section.dataset.state = "loaded";
  }

  async function errorOf(res) {
    const text = await res.text();
    try {
      return JSON.parse(text).error || text;
    } catch (e) {
      return text || res.status + " " + res.statusText;
    }
  }

  function describe(e) {
    switch (e.event) {
      case "queued": return ["Queued: " + e.scope, ""];
      case "set": {
        const rev = e.revision ? " @ " + e.revision.slice(0, 19) : "";
        const counts = [e.applied.length + " applied", (e.unchanged || 0) + " unchanged",
          e.pruned.length + " pruned"];
        if (e.failed.length) counts.push(e.failed.length + " failed");
        const head = e.name + rev + ": " + (e.converged ? "converged" : "FAILED" +
          (e.kind ? " (" + e.kind + ")" : "")) + ": " + counts.join(", ");
        const lines = [head].concat(e.error ? ["error: " + e.error] : [],
          e.applied.map((a) => "applied " + a), e.pruned.map((p) => "pruned " + p),
          e.failed.map((f) => "failed " + f), e.notes.map((n) => "note: " + n));
        return [lines.join("\n"), e.converged ? "ok" : "failed"];
      }
      case "error": return ["Error: " + e.message, "failed"];
      case "done": return [e.ok ? "Done: every set converged" : "Done: not everything converged",
        e.ok ? "ok" : "failed"];
      default: return [JSON.stringify(e), ""];
    }
  }

  // "Sync now": the sync's events as they arrive.
  async function sync(button) {
    const panel = $("#sync-panel"), log = $("#sync-log");
    if (syncing) return; // one at a time: its log is the panel's
    syncing = true;
    for (const b of $$("button[data-sync]")) b.disabled = true;
    const body = {};
    if (button.dataset.tenant) body.tenant = button.dataset.tenant;
    if (button.dataset.app) body.app = button.dataset.app;
    panel.hidden = false;
    panel.dataset.state = "running";
    log.innerHTML = "";
    const say = (text, cls) => {
      const li = document.createElement("li");
      li.textContent = text;
      if (cls) li.className = cls;
      log.appendChild(li);
    };
    let state = "failed";
    try {
      const res = await fetch("/ui/sync", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Flotilla-Csrf": csrf },
        body: JSON.stringify(body),
      });
      if (!res.ok) {
        say("Refused: " + (await errorOf(res)), "failed");
      } else {
        const reader = res.body.getReader(), decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let nl;
          while ((nl = buffer.indexOf("\n")) >= 0) {
            const line = buffer.slice(0, nl).trim();
            buffer = buffer.slice(nl + 1);
            if (!line) continue;
            const event = JSON.parse(line);
            const [text, cls] = describe(event);
            say(text, cls);
            if (event.event === "done") state = event.ok ? "ok" : "failed";
          }
        }
      }
    } catch (e) {
      say("The agent did not answer: " + e, "failed");
    }
    syncing = false;
    for (const b of $$("button[data-sync]")) b.disabled = false;
    panel.dataset.state = "done-" + state;
    refresh();
    if (page === "unit") inspect();
  }

  document.addEventListener("click", (ev) => {
    const button = ev.target.closest("button[data-sync]");
    if (button) {
      ev.preventDefault();
      sync(button);
      return;
    }
    const count = ev.target.closest("a.count");
    if (count && $("#f-result")) {
      ev.preventDefault();
      $("#f-result").value = count.dataset.result;
      filters();
    }
    if (ev.target.id === "inspect-again") inspect();
  });

  if (page === "login") {
    const next = $("#next");
    if (next) next.value = location.pathname + location.search;
    return;
  }
  const form = $("#filters");
  if (form) {
    form.addEventListener("submit", (ev) => { ev.preventDefault(); filters(); });
    form.addEventListener("input", filters);
    form.addEventListener("change", filters);
  }
  localTimes(document);
  filters();
  listen();
  if (page === "unit") inspect();
})();
