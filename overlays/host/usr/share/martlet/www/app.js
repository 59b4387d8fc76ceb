// Martlet's web UI: one client of the REST API (Sources/MartletHost/openapi.yaml). A login
// with a host account gives a session cookie (HttpOnly: this script never sees it) and a CSRF
// token sent with every change; a person may use an API token instead. Either is kept for this
// browser tab only (sessionStorage). No build step.

const $ = (selector) => document.querySelector(selector);
/** {kind: "session", csrf} or {kind: "token", token}; null when logged out. */
let credentials = JSON.parse(sessionStorage.getItem("martlet-credentials") ?? "null");
let view = "vms";
/** The VM whose console is open, its xterm.js terminal and its WebSocket. */
let consoleVM = null;
let terminal = null;
let consoleSocket = null;
let timer = null;

/** One API call; throws an Error carrying the API's message on anything but 2xx. */
function authHeaders() {
  if (!credentials) return {};
  return credentials.kind === "token" ? { Authorization: `Bearer ${credentials.token}` } : { "X-CSRF-Token": credentials.csrf };
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { ...authHeaders(), ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (response.status === 401) {
    logout("The host did not accept this login any more. Log in again.");
    throw new Error("not logged in");
  }
  const text = await response.text();
  if (!response.ok) {
    let message = `${response.status}`;
    try {
      const error = JSON.parse(text).error;
      message = error.message + (error.hint ? ` (${error.hint})` : "");
    } catch { /* not JSON: keep the status */ }
    throw new Error(message);
  }
  return text && response.headers.get("Content-Type")?.includes("json") ? JSON.parse(text) : text;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${Number.isInteger(n) ? n : n.toFixed(1)} ${units[i]}`;
}

/** A table row from cells (text, or a node). */
function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell); else td.textContent = cell;
    tr.append(td);
  }
  return tr;
}

function button(label, action, { danger = false, confirmText = null } = {}) {
  const b = document.createElement("button");
  b.textContent = label;
  b.dataset.action = label.toLowerCase();
  if (danger) b.className = "danger";
  b.addEventListener("click", async () => {
    if (confirmText && !confirm(confirmText)) return;
    b.disabled = true;
    try { await action(); } catch (error) { alert(error.message); } finally { b.disabled = false; refresh(); }
  });
  return b;
}

function show(name) {
  view = name;
  for (const id of ["login", "summary", "vms", "storage"]) $(`#${id}`).hidden = id !== name;
  for (const b of document.querySelectorAll("nav button[data-view]")) b.classList.toggle("active", b.dataset.view === name);
  refresh();
}

function logout(message = "") {
  closeConsole();
  stopVMEvents();
  if (credentials?.kind === "session") fetch("/v1/logout", { method: "POST", headers: authHeaders() });
  credentials = null;
  sessionStorage.removeItem("martlet-credentials");
  $("#tabs").hidden = true;
  $("#host-name").textContent = "";
  $("#login-error").textContent = message;
  show("login");
}

async function renderSummary() {
  const host = await api("GET", "/v1/host");
  $("#host-name").textContent = host.hostname;
  const facts = [
    ["Host name", host.hostname], ["Martlet version", host.version ?? "—"],
    ["Up", `${Math.floor(host.uptimeSeconds / 3600)} h ${Math.floor(host.uptimeSeconds % 3600 / 60)} min`],
    ["CPUs", host.cpus], ["Memory", bytes(host.memoryBytes)],
    ["KVM", host.kvm ? "usable" : "NOT usable: no VM can start"],
    ["br0", host.addresses.join(", ") || "no address"],
  ];
  $("#host-facts").replaceChildren(...facts.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
  $("#pool-usage tbody").replaceChildren(...host.pools.map((p) =>
    row([p.name, p.type, bytes(p.used), bytes(p.free), p.volumes])));
}

/** The VM list's server-sent events while a session is logged in (see renderVMs). */
let vmEvents = null;

async function renderVMs() {
  // A session follows the list live (GET /v1/vms as server-sent events: EventSource sends
  // the cookie); a token cannot go on an EventSource, so a token login reads it every 2 s.
  if (credentials?.kind === "session") {
    if (!vmEvents) {
      vmEvents = new EventSource("/v1/vms");
      vmEvents.onmessage = (event) => renderVMTable(JSON.parse(event.data));
    }
  } else {
    renderVMTable(await api("GET", "/v1/vms"));
  }
  await renderDiskChoices();
}

function stopVMEvents() {
  vmEvents?.close();
  vmEvents = null;
}

function renderVMTable(vms) {
  $("#vm-table tbody").replaceChildren(...vms.map((vm) => {
    const state = document.createElement("span");
    state.className = `state-${vm.state}`;
    state.textContent = vm.state + (vm.problem ? ` (${vm.problem})` : "");
    const actions = document.createElement("span");
    const path = `/v1/vms/${encodeURIComponent(vm.name)}`;
    if (vm.state === "running") {
      actions.append(
        button("Shutdown", () => api("POST", `${path}/stop?grace=30`)),
        button("Force stop", () => api("POST", `${path}/stop`), { danger: true }),
        button("Restart", () => api("POST", `${path}/restart`)));
    } else {
      actions.append(
        button("Start", () => api("POST", `${path}/start`)),
        button("Delete", () => api("DELETE", path), { danger: true, confirmText: `Delete VM ${vm.name}? Its volumes stay.` }));
    }
    actions.append(button("Console", () => {
      $("#create").open = false;
      openConsole(vm.name);
      $("#vm-detail").scrollIntoView();
    }));
    const tr = row([vm.name, state, vm.definition.vcpus, bytes(vm.definition.memory), vm.definition.boot.mode, actions]);
    tr.dataset.vm = vm.name;
    tr.lastChild.className = "actions";
    return tr;
  }));
}

/** Volumes for the create form's disk list. */
async function renderDiskChoices() {
  const select = $("#create-form select[name=disk]");
  const current = select.value;
  const pools = await api("GET", "/v1/pools");
  const options = [new Option("none", "")];
  for (const pool of pools) {
    for (const volume of await api("GET", `/v1/pools/${encodeURIComponent(pool.name)}/volumes`)) {
      options.push(new Option(`${pool.name}/${volume.name} (${bytes(volume.size)})`, `${pool.name}/${volume.name}`));
    }
  }
  select.replaceChildren(...options);
  select.value = current;
}

/**
 * The VM's serial console, two-way: xterm.js (window.Terminal, served by the API from Debian's
 * node-xterm) over the API's WebSocket, which replays the recent output first. The browser
 * sends the session cookie with it; an API token cannot go on a WebSocket from a page.
 */
function openConsole(name) {
  closeConsole();
  consoleVM = name;
  $("#vm-detail").hidden = false;
  $("#console-name").textContent = name;
  $("#console-state").textContent = "";
  if (credentials?.kind !== "session") {
    $("#console-state").textContent = "The console needs a login with a host account: a browser cannot send an API token on a WebSocket.";
    return;
  }
  // The screen reader mode keeps the screen's text in the page (the terminal draws on a
  // canvas); a bare line feed starts a new line, as firmware and early boot print them.
  terminal = new window.Terminal({ rows: 24, cols: 100, screenReaderMode: true, convertEol: true });
  terminal.open($("#console"));
  const socket = new WebSocket(`wss://${location.host}/v1/vms/${encodeURIComponent(name)}/console/ws`);
  socket.binaryType = "arraybuffer";
  const decoder = new TextDecoder();
  socket.onopen = () => { $("#console-state").textContent = "Connected: keys typed here go to the VM's serial port."; terminal.focus(); };
  socket.onmessage = (event) => terminal.write(typeof event.data === "string" ? event.data : decoder.decode(event.data, { stream: true }));
  socket.onclose = (event) => {
    if (consoleSocket !== socket) return;
    $("#console-state").textContent = `Disconnected${event.reason ? `: ${event.reason}` : ""}. Press Console to connect again.`;
  };
  terminal.on("data", (data) => { if (socket.readyState === WebSocket.OPEN) socket.send(data); });
  consoleSocket = socket;
}

function closeConsole() {
  const socket = consoleSocket;
  consoleSocket = null;
  socket?.close();
  terminal?.destroy();
  terminal = null;
  consoleVM = null;
  $("#vm-detail").hidden = true;
}

async function renderStorage() {
  const pools = await api("GET", "/v1/pools");
  const poolSelect = $("#volume-form select[name=pool]");
  if (poolSelect.options.length !== pools.length) poolSelect.replaceChildren(...pools.map((p) => new Option(p.name, p.name)));
  const rows = [];
  for (const pool of pools) {
    for (const volume of await api("GET", `/v1/pools/${encodeURIComponent(pool.name)}/volumes`)) {
      const path = `/v1/pools/${encodeURIComponent(pool.name)}/volumes/${encodeURIComponent(volume.name)}`;
      const tr = row([`${pool.name}/${volume.name}`, bytes(volume.size), bytes(volume.allocated),
        button("Delete", () => api("DELETE", path), { danger: true, confirmText: `Delete volume ${pool.name}/${volume.name} and its data?` })]);
      tr.dataset.volume = `${pool.name}/${volume.name}`;
      rows.push(tr);
    }
  }
  $("#volume-table tbody").replaceChildren(...rows);
}

async function refresh() {
  clearTimeout(timer);
  if (!credentials) return;
  try {
    if (view === "summary") await renderSummary();
    if (view === "vms") await renderVMs();
    if (view === "storage") await renderStorage();
  } catch (error) {
    if (credentials) console.error(error);
  }
  // Live enough for state changes; every call is a cheap local read.
  if (credentials) timer = setTimeout(refresh, 2000);
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = $("#token").value.trim();
  let candidate;
  if (token) {
    candidate = { kind: "token", token };
  } else {
    const response = await fetch("/v1/login", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: $("#user").value, password: $("#password").value }),
    });
    if (!response.ok) {
      $("#login-error").textContent = response.status === 401 ? "Wrong user name or password." : `The host answered ${response.status}.`;
      return;
    }
    candidate = { kind: "session", csrf: (await response.json()).csrfToken };
  }
  credentials = candidate;
  const check = await fetch("/v1/host", { headers: authHeaders() });
  if (!check.ok) {
    credentials = null;
    $("#login-error").textContent = check.status === 401 ? "That token is not valid." : `The host answered ${check.status}.`;
    return;
  }
  sessionStorage.setItem("martlet-credentials", JSON.stringify(credentials));
  $("#token").value = "";
  $("#password").value = "";
  $("#login-error").textContent = "";
  $("#tabs").hidden = false;
  $("#host-name").textContent = (await check.json()).hostname;
  show("vms");
});

$("#create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const request = { name: form.get("name"), vcpus: Number(form.get("vcpus")), memory: form.get("memory"), boot: form.get("boot") };
  if (request.boot === "kernel") {
    request.kernel = form.get("kernel");
    if (form.get("initrd")) request.initrd = form.get("initrd");
    request.cmdline = form.get("cmdline");
  }
  if (form.get("disk")) {
    const [pool, volume] = form.get("disk").split("/");
    request.disks = [{ pool, volume }];
  }
  if (form.get("nic")) request.nics = [{ bridge: "br0" }];
  if (form.get("sshKey")) request.cloudInit = { sshKeys: [form.get("sshKey")], hostname: request.name };
  try {
    await api("POST", "/v1/vms", request);
    $("#create-error").textContent = "";
    event.target.reset();
    refresh();
  } catch (error) {
    $("#create-error").textContent = error.message;
  }
});

$("#volume-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const request = { name: form.get("name") };
  if (form.get("image")) request.image = form.get("image"); else request.size = form.get("size");
  try {
    await api("POST", `/v1/pools/${encodeURIComponent(form.get("pool"))}/volumes`, request);
    $("#volume-error").textContent = "";
    event.target.reset();
    refresh();
  } catch (error) {
    $("#volume-error").textContent = error.message;
  }
});

for (const b of document.querySelectorAll("nav button[data-view]")) b.addEventListener("click", () => show(b.dataset.view));
$("#logout").addEventListener("click", () => logout());

if (credentials) { $("#tabs").hidden = false; show("vms"); } else { show("login"); }
