// Martlet's web UI: one client of the REST API (Sources/MartletHost/openapi.yaml). A login
// with a host account's password, or with an API token, gives a session cookie (HttpOnly:
// this script never sees it, and the browser sends it on the live list's EventSource and the
// console's WebSocket, which cannot carry a header) and a CSRF token sent with every change,
// kept for this browser tab only (sessionStorage). The token itself is not kept. No build step.

const $ = (selector) => document.querySelector(selector);
/** {csrf, readOnly} of the session; null when logged out. */
let credentials = JSON.parse(sessionStorage.getItem("martlet-credentials") ?? "null");
let view = "vms";
/** The VM whose detail is open; its console's xterm.js terminal and WebSocket. */
let detailVM = null;
let terminal = null;
let consoleSocket = null;
let timer = null;

function authHeaders() {
  return credentials ? { "X-CSRF-Token": credentials.csrf } : {};
}

/** One API call; throws an Error carrying the API's message on anything but 2xx. */
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
  if (!response.ok) throw new Error(errorMessage(response.status, text));
  return text && response.headers.get("Content-Type")?.includes("json") ? JSON.parse(text) : text;
}

/** The API's error message (and hint) from a response body, or the bare status. */
function errorMessage(status, text) {
  try {
    const error = JSON.parse(text).error;
    return error.message + (error.hint ? ` (${error.hint})` : "");
  } catch {
    return `${status}`;
  }
}

/** Fills a <dl> with [term, value] pairs. */
function renderFacts(selector, facts) {
  $(selector).replaceChildren(...facts.flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
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
  if (name === "install-log") renderInstallLog();
  for (const id of ["login", "summary", "vms", "storage", "install-log"]) $(`#${id}`).hidden = id !== name;
  for (const b of document.querySelectorAll("nav button[data-view]")) b.classList.toggle("active", b.dataset.view === name);
  refresh();
}

function logout(message = "") {
  closeDetail();
  stopVMEvents();
  if (credentials) fetch("/v1/logout", { method: "POST", headers: authHeaders() });
  credentials = null;
  sessionStorage.removeItem("martlet-credentials");
  $("#tabs").hidden = true;
  $("#host-name").textContent = "";
  $("#login-error").textContent = message;
  show("login");
}

async function renderSummary() {
  const host = await api("GET", "/v1/host");
  $("#host-name").textContent = host.hostname + (credentials?.readOnly ? " (read-only login)" : "");
  const facts = [
    ["Host name", host.hostname], ["Martlet version", host.version ?? "—"],
    ["Up", `${Math.floor(host.uptimeSeconds / 3600)} h ${Math.floor(host.uptimeSeconds % 3600 / 60)} min`],
    ["CPUs", host.cpus], ["Memory", bytes(host.memoryBytes)],
    ["KVM", host.kvm ? "usable" : "NOT usable: no VM can start"],
    ["br0", host.addresses.join(", ") || "no address"],
  ];
  renderFacts("#host-facts", facts);
  $("#pool-usage tbody").replaceChildren(...host.pools.map((p) =>
    row([p.name, p.type, bytes(p.used), bytes(p.free), p.volumes])));
}

/** The VM list's server-sent events while a session is logged in (see renderVMs). */
let vmEvents = null;

async function renderVMs() {
  // The list follows the host live: GET /v1/vms as server-sent events (EventSource sends the
  // session cookie; it reconnects by itself after a dropped connection).
  if (!vmEvents) {
    vmEvents = new EventSource("/v1/vms");
    vmEvents.onmessage = (event) => renderVMTable(JSON.parse(event.data));
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
    actions.append(
      button("Details", () => openDetail(vm.name, { console: false })),
      button("Console", () => openDetail(vm.name, { console: true })));
    const uptime = document.createElement("span");
    uptime.className = "uptime";
    if (vm.startedAt) uptime.dataset.started = vm.startedAt;
    const tr = row([vm.name, state, uptime, vm.definition.vcpus, bytes(vm.definition.memory), vm.definition.boot.mode, actions]);
    tr.dataset.vm = vm.name;
    tr.lastChild.className = "actions";
    return tr;
  }));
  const shown = vms.find((vm) => vm.name === detailVM);
  if (shown) renderDetail(shown);
  showUptimes();
}

/** "2 d 3 h", "3 h 12 min", "4 min 10 s": how long ago `startedAt` (seconds since 1970) was. */
function duration(startedAt) {
  const s = Math.max(0, Math.floor(Date.now() / 1000 - startedAt));
  const [d, h, m] = [Math.floor(s / 86400), Math.floor(s % 86400 / 3600), Math.floor(s % 3600 / 60)];
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  return m ? `${m} min ${s % 60} s` : `${s} s`;
}

/** The uptime cells count on between list updates (the live list changes only with states). */
function showUptimes() {
  for (const cell of document.querySelectorAll(".uptime")) {
    cell.textContent = cell.dataset.started ? duration(Number(cell.dataset.started)) : "—";
  }
}

/** A VM's detail: its facts, the edit form (vCPUs, memory), disks, NICs and console. */
async function openDetail(name, { console: connect }) {
  closeDetail();
  const vm = await api("GET", `/v1/vms/${encodeURIComponent(name)}`);
  detailVM = name;
  $("#create").open = false;
  $("#detail-name").textContent = name;
  $("#edit-error").textContent = "";
  fillEditForm(vm);
  // A read-only login cannot change a VM: no form that can only be refused.
  $("#edit-form").hidden = Boolean(credentials?.readOnly);
  renderDetail(vm);
  $("#vm-detail").hidden = false;
  if (connect) openConsole(name);
  $("#vm-detail").scrollIntoView();
}

function fillEditForm(vm) {
  const form = $("#edit-form");
  form.elements.vcpus.value = vm.definition.vcpus;
  // Whole MiB: what a definition's memory always is, and a size the API reads back.
  form.elements.memory.value = `${vm.definition.memory / 1048576}MiB`;
}

/** The parts of the detail that follow the live list; the edit form keeps what is typed. */
function renderDetail(vm) {
  const boot = vm.definition.boot;
  const facts = [
    ["State", vm.state + (vm.problem ? ` (${vm.problem})` : "")],
    ["Running since", vm.startedAt ? new Date(vm.startedAt * 1000).toLocaleString() : "—"],
    ["vCPUs", vm.definition.vcpus], ["Memory", bytes(vm.definition.memory)],
    ["Boot", boot.mode === "kernel" ? `kernel ${boot.kernel}${boot.initrd ? ` + ${boot.initrd}` : ""}: ${boot.cmdline}` : `disk, firmware ${boot.firmware ?? "SeaBIOS (default)"}`],
    ["Autostart", vm.definition.autostart ? "yes" : "no"], ["On crash", vm.definition.onCrash],
  ];
  renderFacts("#detail-facts", facts);
  if (!consoleSocket) $("#console-state").textContent = vm.state === "running" ? "Press Console to connect." : "The console connects while the VM runs.";
  const disks = vm.definition.disks.map((d, i) => row([`vd${String.fromCharCode(97 + i)}`, `${d.pool}/${d.volume}`, d.readOnly ? "read-only" : "read-write"]));
  if (vm.definition.cloudInit) disks.push(row([`vd${String.fromCharCode(97 + disks.length)}`, "cloud-init seed (made at start)", "read-only"]));
  $("#detail-disks tbody").replaceChildren(...(disks.length ? disks : [row(["—", "no disks", ""])]));
  const nics = vm.definition.nics.map((n, i) => row([`eth${i}`, n.bridge, n.mac]));
  $("#detail-nics tbody").replaceChildren(...(nics.length ? nics : [row(["—", "no NICs", ""])]));
}

function closeDetail() {
  closeConsole();
  detailVM = null;
  $("#vm-detail").hidden = true;
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
 * sends the session cookie with it; a read-only login watches, and a key it types closes it.
 */
function openConsole(name) {
  closeConsole();
  $("#console-state").textContent = "";
  // The screen reader mode keeps the screen's text in the page (the terminal draws on a
  // canvas); a bare line feed starts a new line, as firmware and early boot print them.
  terminal = new window.Terminal({ rows: 24, cols: 100, screenReaderMode: true, convertEol: true });
  terminal.open($("#console"));
  const socket = new WebSocket(`wss://${location.host}/v1/vms/${encodeURIComponent(name)}/console/ws`);
  socket.binaryType = "arraybuffer";
  const decoder = new TextDecoder();
  socket.onopen = () => {
    $("#console-state").textContent = credentials?.readOnly
      ? "Connected, watching only: this login is read-only (a key typed here closes the console)."
      : "Connected: keys typed here go to the VM's serial port.";
    terminal.focus();
  };
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
}

async function renderStorage() {
  const pools = await api("GET", "/v1/pools");
  for (const poolSelect of [$("#volume-form select[name=pool]"), $("#upload-form select[name=pool]")]) {
    if (poolSelect.options.length !== pools.length) poolSelect.replaceChildren(...pools.map((p) => new Option(p.name, p.name)));
  }
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
  // Replaced only when the volumes change: the list refreshes every 2 s, maybe while open.
  const resizeSelect = $("#resize-form select[name=volume]");
  const names = rows.map((tr) => tr.dataset.volume);
  if ([...resizeSelect.options].map((o) => o.value).join("\n") !== names.join("\n")) {
    const chosen = resizeSelect.value;
    resizeSelect.replaceChildren(...names.map((name) => new Option(name, name)));
    if (names.includes(chosen)) resizeSelect.value = chosen;
  }
}

/** The volume's path in the API for "POOL/VOLUME". */
function volumePath(reference) {
  const [pool, volume] = reference.split("/");
  return `/v1/pools/${encodeURIComponent(pool)}/volumes/${encodeURIComponent(volume)}`;
}

/**
 * Sends `file` as the body of PUT …/content: XMLHttpRequest rather than fetch, as only it
 * reports the upload's progress. The browser streams the file; the API streams it to disk.
 */
function uploadImage(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("PUT", path);
    for (const [name, value] of Object.entries(authHeaders())) request.setRequestHeader(name, value);
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.upload.onprogress = (event) => { if (event.lengthComputable) onProgress(event.loaded, event.total); };
    request.onload = () => {
      if (request.status === 201) return resolve(JSON.parse(request.responseText));
      reject(new Error(errorMessage(request.status, request.responseText)));
    };
    request.onerror = () => reject(new Error("the connection to the host failed during the upload"));
    request.send(file);
  });
}

/** The installer's log, read once when the page is opened (it does not change). */
async function renderInstallLog() {
  $("#install-log-state").textContent = "Loading…";
  $("#install-log-text").textContent = "";
  try {
    const text = await api("GET", "/v1/host/install-log");
    $("#install-log-state").textContent = `${text.split("\n").length - 1} lines.`;
    $("#install-log-text").textContent = text;
  } catch (error) {
    $("#install-log-state").textContent = error.message;
  }
}

async function refresh() {
  clearTimeout(timer);
  if (!credentials) return;
  try {
    if (view === "summary") await renderSummary();
    if (view === "vms") { await renderVMs(); showUptimes(); }
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
  const response = await fetch("/v1/login", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify(token ? { token } : { user: $("#user").value, password: $("#password").value }),
  });
  if (!response.ok) {
    $("#login-error").textContent = response.status !== 401 ? `The host answered ${response.status}.`
      : token ? "That token is not valid." : "Wrong user name or password.";
    return;
  }
  const login = await response.json();
  credentials = { csrf: login.csrfToken, readOnly: login.readOnly };
  const check = await fetch("/v1/host");
  if (!check.ok) {
    credentials = null;
    $("#login-error").textContent = `The host answered ${check.status}.`;
    return;
  }
  sessionStorage.setItem("martlet-credentials", JSON.stringify(credentials));
  $("#token").value = "";
  $("#password").value = "";
  $("#login-error").textContent = "";
  $("#tabs").hidden = false;
  $("#host-name").textContent = (await check.json()).hostname + (credentials.readOnly ? " (read-only login)" : "");
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

$("#edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target.elements;
  try {
    const vm = await api("PATCH", `/v1/vms/${encodeURIComponent(detailVM)}`, { vcpus: Number(form.vcpus.value), memory: form.memory.value.trim() });
    $("#edit-error").textContent = "";
    fillEditForm(vm);
    renderDetail(vm);
    refresh();
  } catch (error) {
    $("#edit-error").textContent = error.message;
  }
});
$("#detail-close").addEventListener("click", () => closeDetail());

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

$("#resize-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target.elements;
  try {
    await api("PUT", volumePath(form.volume.value), { size: form.size.value.trim() });
    $("#resize-error").textContent = "";
    form.size.value = "";
    refresh();
  } catch (error) {
    $("#resize-error").textContent = error.message;
  }
});

$("#upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target.elements;
  const file = form.file.files[0];
  const reference = `${form.pool.value}/${form.name.value}`;
  const progress = $("#upload-progress");
  progress.hidden = false;
  progress.value = 0;
  event.target.querySelector("button[type=submit]").disabled = true;
  $("#upload-error").textContent = "";
  $("#upload-state").textContent = `Sending ${file.name} (${bytes(file.size)})…`;
  try {
    const volume = await uploadImage(`${volumePath(reference)}/content`, file, (loaded, total) => {
      progress.value = loaded / total;
      $("#upload-state").textContent = loaded < total ? `Sent ${bytes(loaded)} of ${bytes(total)}` : "Sent; the host is writing the volume…";
    });
    $("#upload-state").textContent = `Uploaded: ${volume.pool}/${volume.name}, ${bytes(volume.size)}.`;
    event.target.reset();
  } catch (error) {
    $("#upload-state").textContent = "";
    $("#upload-error").textContent = error.message;
  } finally {
    progress.hidden = true;
    event.target.querySelector("button[type=submit]").disabled = false;
    refresh();
  }
});

for (const b of document.querySelectorAll("nav button[data-view]")) b.addEventListener("click", () => show(b.dataset.view));
$("#logout").addEventListener("click", () => logout());

if (credentials) { $("#tabs").hidden = false; show("vms"); } else { show("login"); }
