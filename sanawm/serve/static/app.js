// sanawm live page: one WebSocket per session, JSON control out, binary JPEG frames in (see sanawm/serve/protocol.py).
"use strict";

const KEYMAP = { w: "w", a: "a", s: "s", d: "d", i: "i", j: "j", k: "k", l: "l",
                 arrowup: "w", arrowdown: "s", arrowleft: "a", arrowright: "d" };
const MOUSE_SEND_MS = 33;  // coalesce mouse-look into at most ~30 messages a second
const LAT_KEEP = 200;      // latency samples kept for the HUD's medians

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const auth = token ? { Authorization: "Bearer " + token } : {};

const stats = {  // read by the browser tests through window.sanawmStats
  frames: 0, gen: 0, reproj: 0, chunk: null, frame: null, header: null, id: null,
  latReproj: [], latGen: [], fps: 0, messages: [], errors: [],
};
window.sanawmStats = stats;

let ws = null, held = new Set(), seq = 0, pending = [], uploadId = null, paused = false;
let fpsTimes = [], decodeChain = Promise.resolve(), recorder = null, mouseAcc = [0, 0], mouseTimer = null;
const canvas = $("view"), ctx = canvas.getContext("2d");

function log(text) { const el = $("log"); el.textContent = text + "\n" + el.textContent.slice(0, 4000); }

function median(a) {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)];
}
const ms = (v) => (v == null ? "-" : v.toFixed(0) + " ms");

function hud() {
  const lr = stats.latReproj, lg = stats.latGen;
  $("hud").textContent =
    `session ${stats.id || "-"}   ${paused ? "paused" : ""}\n` +
    `frames/s ${stats.fps.toFixed(1)}   chunk ${stats.chunk ?? "-"}   frame ${stats.frame ?? "-"}   ` +
    `${stats.header ? stats.header.kind : ""}\n` +
    `key→reprojected ${ms(lr[lr.length - 1])} (p50 ${ms(median(lr))})\n` +
    `key→generated   ${ms(lg[lg.length - 1])} (p50 ${ms(median(lg))})\n` +
    `keys ${[...held].join("") || "-"}`;
}

function send(obj) { if (ws && ws.readyState === 1) ws.send(JSON.stringify(obj)); }

function wsUrl(query) {
  const q = new URLSearchParams(query);
  if (token) q.set("token", token);
  return (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws" + (q.toString() ? "?" + q : "");
}

function connect(query, onHello) {
  if (ws) ws.close();
  ws = new WebSocket(wsUrl(query));
  ws.binaryType = "arraybuffer";
  ws.onmessage = (ev) => (typeof ev.data === "string" ? onJson(JSON.parse(ev.data), onHello) : onFrame(ev.data));
  ws.onclose = (ev) => { log(`connection closed (${ev.code}${ev.reason ? " " + ev.reason : ""})`); setRunning(false); };
  ws.onerror = () => log("connection error (server full? see /api/info)");
}

function setRunning(on) { for (const id of ["pause", "snapshot", "fork", "record"]) $(id).disabled = !on; }

function onJson(msg, onHello) {
  stats.messages.push(msg);
  if (msg.type === "hello") { stats.id = msg.id; if (onHello && !msg.started) onHello(); }
  else if (msg.type === "started") {
    stats.id = msg.id; setRunning(true);
    seq = Math.max(seq, msg.seq || 0);  // sequence numbers go on above the session's (resume, fork)
    log(`session ${msg.id} ${msg.resumed ? "resumed from " + msg.resumed : msg.attached ? "attached" : "started"}`);
    canvas.focus();
  } else if (msg.type === "snapshot") { $("resume-id").value = msg.id; log(`snapshot ${msg.id}`); }
  else if (msg.type === "forked") {
    log(`fork ${msg.id} (opened in a new tab)`);
    window.open(location.pathname + "?attach=" + encodeURIComponent(msg.id) + location.hash, "_blank");
  } else if (msg.type === "error") { stats.errors.push(msg); log(`error ${msg.code}: ${msg.message}`); }
  else if (msg.type === "status") log(msg.message);
  else if (msg.type === "resumed") log(msg.message);  // the fleet moved the session to another replica
  else if (msg.type === "idle" || msg.type === "end") {
    log(msg.message); if (msg.snapshot) $("resume-id").value = msg.snapshot;
  }
  hud();
}

function onFrame(buf) {
  const n = new DataView(buf).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  const blob = new Blob([new Uint8Array(buf, 4 + n)], { type: "image/jpeg" });
  decodeChain = decodeChain.then(() => createImageBitmap(blob)).then((bmp) => draw(header, bmp)).catch((e) => log("bad frame: " + e));
}

function draw(header, bmp) {
  if (canvas.width !== bmp.width || canvas.height !== bmp.height) { canvas.width = bmp.width; canvas.height = bmp.height; }
  ctx.drawImage(bmp, 0, 0);
  bmp.close();
  const now = performance.now();
  stats.frames++; stats[header.kind === "gen" ? "gen" : "reproj"]++;
  stats.header = header; stats.chunk = header.chunk; stats.frame = header.frame;
  fpsTimes.push(now);
  while (fpsTimes.length && fpsTimes[0] < now - 1000) fpsTimes.shift();
  stats.fps = fpsTimes.length;
  // key -> photon: the first drawn reprojection that covers the key press, and the first drawn frame whose
  // generated content covers it (gen_seq; it may be warped further for a newer key)
  for (const p of pending) {
    if (header.kind === "reproj" && header.seq >= p.seq && p.reproj == null) { p.reproj = now - p.t; push(stats.latReproj, p.reproj); }
    if (header.gen_seq >= p.seq && p.gen == null) { p.gen = now - p.t; push(stats.latGen, p.gen); }
  }
  pending = pending.filter((p) => p.gen == null).slice(-LAT_KEEP);
  hud();
}

function push(a, v) { a.push(v); if (a.length > LAT_KEEP) a.shift(); }

function keysChanged() {
  seq++;
  pending.push({ seq, t: performance.now(), reproj: null, gen: null });
  send({ op: "keys", keys: [...held].join(""), seq });
  document.querySelectorAll("[data-key]").forEach((b) => b.classList.toggle("held", held.has(b.dataset.key)));
  hud();
}

function typing(ev) { return ev.target && ["INPUT", "SELECT", "TEXTAREA"].includes(ev.target.tagName); }

document.addEventListener("keydown", (ev) => {
  const k = KEYMAP[ev.key.toLowerCase()];
  if (!k || typing(ev)) return;
  ev.preventDefault();
  if (!held.has(k)) { held.add(k); keysChanged(); }
});
document.addEventListener("keyup", (ev) => {
  const k = KEYMAP[ev.key.toLowerCase()];
  if (!k || typing(ev)) return;
  if (held.delete(k)) keysChanged();
});
window.addEventListener("blur", () => { if (held.size) { held.clear(); keysChanged(); } });

document.querySelectorAll("[data-key]").forEach((b) => {
  const k = b.dataset.key;
  b.addEventListener("pointerdown", (ev) => { ev.preventDefault(); if (!held.has(k)) { held.add(k); keysChanged(); } });
  for (const e of ["pointerup", "pointerleave", "pointercancel"]) {
    b.addEventListener(e, () => { if (held.delete(k)) keysChanged(); });
  }
});

canvas.addEventListener("pointermove", (ev) => {
  if (!(ev.buttons & 1)) return;
  mouseAcc[0] += ev.movementX; mouseAcc[1] += ev.movementY;
  if (mouseTimer) return;
  mouseTimer = setTimeout(() => {
    mouseTimer = null;
    const [dx, dy] = mouseAcc; mouseAcc = [0, 0];
    if (!dx && !dy) return;
    seq++;
    pending.push({ seq, t: performance.now(), reproj: null, gen: null });
    send({ op: "mouse", dx, dy, seq });
  }, MOUSE_SEND_MS);
});

$("upload").addEventListener("change", async () => {
  const f = $("upload").files[0];
  if (!f) return;
  const r = await fetch("/api/upload", { method: "POST", body: f, headers: auth });
  const j = await r.json();
  if (!r.ok) { uploadId = null; log(`upload refused: ${j.message}`); return; }
  uploadId = j.id; log(`upload ready (${j.width}x${j.height}, resized and cropped)`);
});

function startMsg() {
  const m = { op: "start", prompt: $("prompt").value, seed: Number($("seed").value) || 0 };
  if (uploadId) m.upload = uploadId; else m.scene = $("scene").value;
  return m;
}

$("start").onclick = () => { seq = 0; pending = []; connect({}, () => send(startMsg())); };
$("resume").onclick = () => {
  const id = $("resume-id").value.trim();
  if (id) { seq = 0; pending = []; connect({}, () => send({ op: "resume", id })); }
};
$("pause").onclick = () => { paused = !paused; send({ op: paused ? "stop" : "go" }); $("pause").textContent = paused ? "Go" : "Pause"; hud(); };
$("snapshot").onclick = () => send({ op: "snapshot" });
$("fork").onclick = () => send({ op: "fork" });

$("record").onclick = () => {
  if (recorder) { recorder.stop(); return; }
  const types = ["video/mp4;codecs=avc1", "video/mp4", "video/webm;codecs=vp9", "video/webm"];
  const mimeType = types.find((t) => window.MediaRecorder && MediaRecorder.isTypeSupported(t));
  if (!mimeType) { log("this browser cannot record the canvas (no MediaRecorder)"); return; }
  const chunks = [];
  recorder = new MediaRecorder(canvas.captureStream(30), { mimeType });
  recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
  recorder.onstop = () => {
    const blob = new Blob(chunks, { type: mimeType.split(";")[0] });
    const a = $("download");
    a.href = URL.createObjectURL(blob); a.download = "sanawm." + (mimeType.startsWith("video/mp4") ? "mp4" : "webm");
    a.hidden = false; a.textContent = `download recording (${(blob.size / 1e6).toFixed(1)} MB, ${a.download})`;
    recorder = null; $("record").textContent = "Record";
  };
  recorder.start(1000);
  $("record").textContent = "Stop recording";
};

(async function init() {
  const r = await fetch("/api/info", { headers: auth });
  if (!r.ok) { log("cannot reach the server API: " + r.status); return; }
  const info = await r.json();
  $("scene").innerHTML = info.scenes.map((s) => `<option value="${s.name}">${s.title}</option>`).join("");
  if (!info.prompt_encoder) $("prompt").placeholder = "(server has no text encoder)";
  canvas.width = info.image_hw[1]; canvas.height = info.image_hw[0];
  hud();
  if (params.get("attach")) connect({ attach: params.get("attach") });
  else if (params.get("resume")) { $("resume-id").value = params.get("resume"); $("resume").onclick(); }
  else if (params.get("autostart")) $("start").onclick();
})();
