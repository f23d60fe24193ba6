// The RemoteMedia browser client: microphone → WebRTC → a pipeline on the server; captions and
// replies come back on a data channel, spoken replies as an audio track.
//
// Query parameters: pipeline=NAME picks the pipeline, token=T sends a bearer token, autostart=1
// starts without a click (for kiosks and tests). Everything the page measured is also kept in
// `window.remotemedia` (captions, replies, latencies, levels, errors).
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// Energy thresholds for the page's own view of the microphone and the reply: RMS in [0, 1].
const SPEECH_RMS = 0.01; // about -40 dBFS
const PAUSE_MS = 150; // silence this long after speech marks an end of speech
const TICK_MS = 10;

const state = (window.remotemedia = {
  status: "idle",
  session: null,
  captions: [], // {text, final, start, end, at, latencyMs}
  replies: [], // {text, at}
  interruptions: [], // the agent's `interrupted` events (barge-in): {heard_ms, dropped_ms, spoken, at}
  latency: { captionMs: [], replyTextMs: [], replyMs: [] },
  micLevelMax: 0,
  replyLevelMax: 0,
  replyAudioMs: 0, // how long the reply track was audible
  audioContext: null, // the Web Audio context's state ("suspended" measures nothing)
  micPackets: 0, // RTP packets sent from the microphone and received on the reply track,
  replyPackets: 0, // from the peer connection's own statistics
  replyBufferMs: 0, // the mean time reply audio spent in the browser's jitter buffer
  speechEnds: 0,
  errors: [],
});

let call = null; // the live call: {pc, dc, stream, ctx, timer, location, pipeline}

function setStatus(text) {
  state.status = text;
  $("status").textContent = text;
}

function showError(message) {
  state.errors.push(message);
  $("error").textContent = message;
  $("error").style.display = "block";
}

function clearError() {
  $("error").style.display = "none";
}

function authHeaders() {
  const token = params.get("token");
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function loadPipelines() {
  const select = $("pipeline");
  try {
    const res = await fetch("/v1/pipelines", { headers: authHeaders() });
    if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
    for (const p of await res.json()) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = p.name;
      select.appendChild(opt);
    }
  } catch (e) {
    showError(`The server does not answer (${e.message}); is remotemedia serve running?`);
  }
  const wanted = params.get("pipeline");
  if (wanted) select.value = wanted;
}

// Resolves when ICE gathering is complete: the offer then carries every candidate (no trickle).
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, 2000); // loopback gathers in milliseconds; never wait forever
  });
}

function rms(analyser, buf) {
  analyser.getFloatTimeDomainData(buf);
  let sum = 0;
  for (const v of buf) sum += v * v;
  return Math.sqrt(sum / buf.length);
}

async function start() {
  clearError();
  const pipeline = $("pipeline").value || params.get("pipeline");
  if (!pipeline) {
    showError("No pipeline to call: the server lists none.");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    showError(
      `The microphone is not available (${e.name}: ${e.message}). Allow microphone access for ` +
        "this page and press Start again."
    );
    return;
  }
  setStatus("connecting");
  const pc = new RTCPeerConnection();
  const dc = pc.createDataChannel("events");
  call = { pc, dc, stream, location: null };
  pc.addTransceiver(stream.getAudioTracks()[0], { direction: "sendrecv", streams: [stream] });
  dc.onmessage = (e) => onMessage(JSON.parse(e.data));
  pc.ontrack = (e) => onReplyTrack(e.streams[0] || new MediaStream([e.track]));
  pc.onconnectionstatechange = () => {
    const s = pc.connectionState;
    // The data channel's `ready` may come before the connection reports itself connected:
    // keep the pipeline's name it gave.
    if (s === "connected") setStatus(call?.pipeline ? `live — ${call.pipeline}` : "live");
    if (s === "failed") {
      showError("The connection to the server failed (ICE could not connect).");
      stop();
    }
    if (s === "disconnected") setStatus("connection interrupted");
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const res = await fetch(`/v1/webrtc/${encodeURIComponent(pipeline)}`, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", ...authHeaders() },
      body: pc.localDescription.sdp,
    });
    if (!res.ok) {
      throw new Error(`the server refused the call: ${res.status} ${(await res.text()).trim()}`);
    }
    call.location = res.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
  } catch (e) {
    const message =
      e instanceof TypeError ? `the server cannot be reached (${e.message})` : e.message;
    showError(`Could not start: ${message}.`);
    stop();
    return;
  }
  watchLevels(stream);
  call.statsTimer = setInterval(async () => {
    for (const r of (await pc.getStats()).values()) {
      if (r.kind !== "audio") continue;
      if (r.type === "outbound-rtp") state.micPackets = r.packetsSent;
      if (r.type === "inbound-rtp") {
        state.replyPackets = r.packetsReceived;
        // How long the browser's jitter buffer held the reply audio, on average.
        if (r.jitterBufferEmittedCount)
          state.replyBufferMs = Math.round((1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount);
      }
    }
  }, 500);
  $("toggle").textContent = "Stop";
  $("toggle").classList.add("live");
}

function stop() {
  if (!call) return;
  const { pc, stream, ctx, timer, statsTimer, location: where } = call;
  call = null;
  clearInterval(timer);
  clearInterval(statsTimer);
  if (where) fetch(where, { method: "DELETE", headers: authHeaders() }).catch(() => {});
  pc.close();
  stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  $("toggle").textContent = "Start";
  $("toggle").classList.remove("live");
  $("micLevel").value = 0;
  if (!state.errors.length || state.status !== "idle") setStatus("stopped");
}

// -- levels and latency ----------------------------------------------------------------------

let lastSpeechEnd = null; // performance.now() of the latest end of speech
let captionPending = false; // an end of speech still waiting for its caption
let replyPending = false; // a reply to the latest speech was announced; its audio is awaited
let replyArmedAt = 0;

function watchLevels(stream) {
  const ctx = new AudioContext();
  ctx.resume().catch(() => {}); // may start suspended when the call was not started by a click
  const mic = ctx.createAnalyser();
  mic.fftSize = 1024;
  ctx.createMediaStreamSource(stream).connect(mic);
  call.ctx = ctx;
  if (call.replyStream) listenToReply(call.replyStream);
  const buf = new Float32Array(mic.fftSize);
  let speaking = false;
  let lastLoud = 0;
  let replyAudible = false;
  call.timer = setInterval(() => {
    const now = performance.now();
    state.audioContext = ctx.state;
    const level = rms(mic, buf);
    state.micLevelMax = Math.max(state.micLevelMax, level);
    $("micLevel").value = Math.min(1, level * 5);
    if (level > SPEECH_RMS) {
      speaking = true;
      lastLoud = now;
    } else if (speaking && now - lastLoud > PAUSE_MS) {
      speaking = false;
      lastSpeechEnd = lastLoud;
      captionPending = true;
      replyPending = false; // until the reply to this speech is announced
      state.speechEnds += 1;
    }
    if (call && call.replyAnalyser) {
      const r = rms(call.replyAnalyser, buf);
      state.replyLevelMax = Math.max(state.replyLevelMax, r);
      if (r > SPEECH_RMS) {
        state.replyAudioMs += TICK_MS;
        // An onset after the reply was announced (audio still playing from an earlier reply
        // does not count).
        if (!replyAudible && replyPending && now > replyArmedAt) {
          record("replyMs", now - lastSpeechEnd);
          replyPending = false;
        }
      }
      replyAudible = r > SPEECH_RMS;
    }
  }, TICK_MS);
}

function onReplyTrack(stream) {
  // Chromium delivers remote WebRTC audio to Web Audio only while a media element plays it.
  $("reply").srcObject = stream;
  $("reply").play().catch(() => {});
  if (!call) return;
  call.replyStream = stream;
  if (call.ctx) listenToReply(stream);
}

function listenToReply(stream) {
  const analyser = call.ctx.createAnalyser();
  analyser.fftSize = 1024;
  call.ctx.createMediaStreamSource(stream).connect(analyser);
  call.replyAnalyser = analyser;
}

function record(kind, ms) {
  state.latency[kind].push(Math.round(ms));
  const median = (xs) => {
    if (!xs.length) return "–";
    const s = [...xs].sort((a, b) => a - b);
    return `${s[Math.floor((s.length - 1) / 2)]} ms (median of ${s.length})`;
  };
  $("latency").textContent =
    `end of speech → caption: ${median(state.latency.captionMs)}; ` +
    `end of speech → first reply audio: ${median(state.latency.replyMs)}`;
}

// -- messages from the server ------------------------------------------------------------------

function stamp(start, end) {
  const f = (s) => (s == null ? "" : s.toFixed(2));
  return start == null ? "" : `${f(start)}–${f(end)} s`;
}

let interim = null; // the element showing the current interim caption
const finalStarts = new Set(); // utterances already captioned for good

function addLine(log, text, time, cls) {
  const line = document.createElement("div");
  line.className = `line ${cls || ""}`;
  const t = document.createElement("span");
  t.className = "t";
  t.textContent = time;
  line.append(t, document.createTextNode(text));
  log.appendChild(line);
  log.scrollTop = log.scrollHeight;
  return line;
}

function onMessage(msg) {
  const now = performance.now();
  if (msg.type === "ready") {
    state.session = msg.session;
    if (call) call.pipeline = msg.pipeline;
    setStatus(`live — ${msg.pipeline}`);
  } else if (msg.type === "text" && msg.node.startsWith("reply")) {
    // The reply's audio follows its text: its next onset is the first reply audio.
    if (lastSpeechEnd !== null && !state.replies.some((r) => r.at > lastSpeechEnd)) {
      replyPending = true;
      replyArmedAt = now;
      record("replyTextMs", now - lastSpeechEnd);
    }
    state.replies.push({ text: msg.text, at: now });
    addLine($("replies"), msg.text, stamp(msg.start, msg.end));
  } else if (msg.type === "text") {
    // An interim hypothesis that arrives after its utterance's final text is stale.
    if (!msg.final && finalStarts.has(msg.start)) return;
    if (msg.final) finalStarts.add(msg.start);
    const caption = { text: msg.text, final: msg.final, start: msg.start, end: msg.end, at: now };
    if (msg.final && captionPending && lastSpeechEnd !== null) {
      caption.latencyMs = Math.round(now - lastSpeechEnd);
      record("captionMs", now - lastSpeechEnd);
      captionPending = false;
    }
    state.captions.push(caption);
    if (interim) interim.remove();
    interim = null;
    const when = stamp(msg.start, msg.end);
    const line = addLine($("captions"), msg.text, when, msg.final ? "" : "interim");
    if (!msg.final) interim = line;
  } else if (msg.type === "json" && msg.value.event === "interrupted") {
    // The user spoke over the reply: the server stopped it and says what was heard.
    state.interruptions.push({ ...msg.value, at: now });
    addLine($("replies"), `(interrupted after “${msg.value.spoken}”)`, "", "interim");
  } else if (msg.type === "error") {
    showError(`The pipeline reported: ${msg.message}`);
    if (msg.fatal) stop();
  } else if (msg.type === "closed") {
    setStatus(`ended: ${msg.reason}`);
    stop();
  }
}

$("toggle").addEventListener("click", () => (call ? stop() : start()));
window.addEventListener("beforeunload", stop);
loadPipelines().then(() => {
  if (params.get("autostart") === "1") start();
});
