// The WhatsApp simulator: made-up customers write through the real pipeline (POST /simulator/api/messages), the
// page polls each chat's transcript and countdown, and shows the replies as bubbles. No inline script (CSP).
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const csrf = () => document.querySelector('meta[name="csrf-token"]').content;
  const saved = JSON.parse(localStorage.getItem("sim-customers") || "[]");
  const state = { customers: saved, current: null, seen: 0, attachment: null, recorder: null, polling: false };

  function api(path, body) {
    return fetch(path, {
      method: body === undefined ? "GET" : "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    }).then((r) => r.json().then((data) => ({ ok: r.ok, data })));
  }

  function renderCustomers() {
    const list = $("customer-list");
    list.replaceChildren();
    state.customers.forEach((c) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "customer" + (state.current && state.current.number === c.number ? " active" : "");
      button.textContent = `${c.name || "Cliente"} · ${c.number}`;
      button.dataset.number = c.number;
      button.addEventListener("click", () => select(c));
      item.append(button);
      list.append(item);
    });
    localStorage.setItem("sim-customers", JSON.stringify(state.customers));
  }

  function select(customer) {
    state.current = customer;
    state.seen = 0;
    $("bubbles").replaceChildren();
    $("chat-title").textContent = `${customer.name || "Cliente"} · ${customer.number}`;
    renderCustomers();
    poll();
  }

  function bubble(entry) {
    const item = document.createElement("li");
    item.className = `bubble ${entry.role}`;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = { customer: state.current.name || "Cliente", person: "Atendente", bot: "Assistente" }[entry.role] || entry.role;
    item.append(who);
    if (entry.media) {
      const media = document.createElement("span");
      media.className = "media";
      media.textContent = { image: "[imagem]", document: "[documento]", audio: "[áudio]" }[entry.media] || entry.media;
      item.append(media);
    }
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = entry.text;  // text, never HTML
    item.append(text);
    return item;
  }

  // One poll at a time, and an answer is used only if nothing was shown since it was asked for: two polls in
  // flight with the same `since` would show an entry twice and then skip as many of the next ones.
  function poll() {
    if (!state.current || state.polling) return;
    const number = state.current.number;
    const since = state.seen;
    state.polling = true;
    api(`/simulator/api/chats/${number}?since=${since}`).then(({ ok, data }) => {
      if (!ok || !state.current || state.current.number !== number || state.seen !== since) return;
      data.entries.forEach((entry) => $("bubbles").append(bubble(entry)));
      if (data.entries.length) $("bubbles").lastElementChild.scrollIntoView({ block: "end" });
      state.seen += data.entries.length;
      const pending = data.pending;
      const left = pending && pending.deadline ? pending.deadline - data.now : null;
      $("countdown").hidden = left === null;
      if (left !== null) $("seconds").textContent = Math.max(0, Math.ceil(left));
      $("typing").hidden = !(pending && pending.answering);
      $("chat-state").textContent = { open: "", paused: "bot pausado", closed: "" }[data.state] || "";
    }).catch(() => {}).finally(() => { state.polling = false; });
  }

  function send(event) {
    event.preventDefault();
    if (!state.current) return;
    const text = $("message").value.trim();
    if (!text && !state.attachment) return;
    const body = {
      number: state.current.number,
      name: state.current.name,
      text,
      id: crypto.randomUUID ? crypto.randomUUID() : String(Date.now() + Math.random()),
      as: $("as-person").checked ? "person" : "customer",
    };
    if (state.attachment) body.media = state.attachment;
    $("message").value = "";
    state.attachment = null;
    $("attachment").hidden = true;
    api("/simulator/api/messages", body).then(poll);
  }

  function readFile(file, extra) {
    const reader = new FileReader();
    reader.onload = () => {
      const data = String(reader.result).split(",", 2)[1] || "";
      const kind = file.type.startsWith("image/") ? "image" : file.type.startsWith("audio/") ? "audio" : "document";
      state.attachment = { kind, mime: file.type || "application/octet-stream", data, file_name: file.name || "", ...extra };
      $("attachment").textContent = `Anexo: ${file.name || kind} (${Math.round(file.size / 1024)} KB)`;
      $("attachment").hidden = false;
    };
    reader.readAsDataURL(file);
  }

  function record() {
    if (state.recorder) { state.recorder.stop(); return; }
    if (!navigator.mediaDevices || !window.MediaRecorder) { alert("Este navegador não grava áudio."); return; }
    navigator.mediaDevices.getUserMedia({ audio: true }).then((stream) => {
      const chunks = [];
      const started = Date.now();
      const recorder = new MediaRecorder(stream);
      recorder.ondataavailable = (e) => chunks.push(e.data);
      recorder.onstop = () => {
        stream.getTracks().forEach((t) => t.stop());
        state.recorder = null;
        $("record").textContent = "Gravar voz";
        const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
        readFile(new File([blob], "voz", { type: blob.type }), { voice: true, seconds: Math.round((Date.now() - started) / 1000) });
      };
      recorder.start();
      state.recorder = recorder;
      $("record").textContent = "Parar gravação";
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("new-customer").addEventListener("submit", (event) => {
      event.preventDefault();
      const number = $("customer-number").value.trim() || String(5511900000000 + Math.floor(Math.random() * 99999));
      const customer = { name: $("customer-name").value.trim() || "Cliente", number };
      state.customers = [customer, ...state.customers.filter((c) => c.number !== number)];
      $("customer-name").value = "";
      $("customer-number").value = "";
      select(customer);
    });
    $("composer").addEventListener("submit", send);
    $("attach").addEventListener("change", (e) => { if (e.target.files[0]) readFile(e.target.files[0], {}); });
    $("record").addEventListener("click", record);
    $("answer-now").addEventListener("click", () => {
      if (state.current) api(`/simulator/api/chats/${state.current.number}/now`, {}).then(poll);
    });
    renderCustomers();
    if (state.customers.length) select(state.customers[0]);
    setInterval(poll, 700);
  });
})();
