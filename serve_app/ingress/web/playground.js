"use strict";
// The playground's behaviour: the live model and voice lists, speech streamed from the captioned
// endpoint (raw pcm and word times on each NDJSON line) and played with Web Audio as it arrives,
// the words highlighted as they are heard, and the whole file offered at the end.

const RATE = 24000;  // the service's pcm: s16le, mono, 24 kHz
const KEY_STORE = "kokoro-playground-api-key";
const LOCAL_FORMATS = new Set(["wav", "pcm"]);  // built from the streamed pcm, no second request
const EXTENSIONS = {mp3: "mp3", opus: "ogg", aac: "aac", flac: "flac", wav: "wav", pcm: "pcm"};
// The page is served at <prefix>/ and <prefix>/web; the API lives under <prefix>/v1.
const API_BASE = location.pathname.replace(/\/web\/?$/, "/").replace(/([^/])$/, "$1/");
const $ = (id) => document.getElementById(id);

// What the page has done so far: shown to people as text, read by the browser test as data.
const state = window.playground = {};
let voices = [];     // [{id, model, language}] from GET /v1/audio/voices
let current = null;  // the utterance being spoken: {controller, player}
let listsAsked = 0;  // asks for the lists so far: only the latest one's answer is used

function resetState() {
  Object.assign(state, {chunksReceived: 0, bytesReceived: 0, words: [], highlighted: [], playedSeconds: 0,
                        firstAudioSeconds: null, totalSeconds: null, madeSeconds: null, done: false,
                        played: false, error: null});
}

// ---- talking to the API ----

const STATUS_HINTS = {
  400: "The service refused the request",
  401: "API key required or wrong: type the service's key in the API key box",
  404: "Not found: is this page served by the Kokoro service?",
  413: "The text is too long",
  429: "Rate limited: too many requests, wait a moment and retry",
  503: "The service is overloaded: wait a moment and retry",
};

async function explain(response) {
  const text = await response.text();
  let message;
  try {
    message = JSON.parse(text).error.message;
  } catch {
    message = text.slice(0, 300) || response.statusText;
  }
  const hint = STATUS_HINTS[response.status] || "The service answered with an error";
  const retry = response.headers.get("Retry-After");
  return `${hint} (${response.status}): ${message}${retry ? ` (retry after ${retry} s)` : ""}`;
}

async function api(path, options = {}) {
  const headers = {"Content-Type": "application/json"};
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(API_BASE + path, {...options, headers});
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new Error(`Cannot reach the service: ${e.message}`);
  }
  if (!response.ok) {
    if (response.status === 401) $("key-box").open = true;
    throw new Error(await explain(response));
  }
  return response;
}

// One parsed object per NDJSON line, as the lines arrive.
async function* ndjsonLines(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = "";
  for (;;) {
    const {value, done} = await reader.read();
    pending += decoder.decode(value || new Uint8Array(), {stream: !done});
    const lines = pending.split("\n");
    pending = lines.pop();
    for (const line of lines) if (line.trim()) yield JSON.parse(line);
    if (done) return;
  }
}

function base64Bytes(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// ---- the model and voice lists ----

async function loadLists() {
  const asked = ++listsAsked;
  showError(null);
  try {
    const [models, voiceList] = await Promise.all(
      ["v1/models", "v1/audio/voices"].map((path) => api(path).then((r) => r.json())));
    if (asked !== listsAsked) return;  // a newer ask (another key) is under way: its answer counts
    voices = voiceList.voices;
    fillModels(models.data);
    fillVoices();
  } catch (e) {
    if (asked === listsAsked) showError(e.message);
  }
}

function fillModels(models) {
  const select = $("model");
  const chosen = select.value;
  const defaultVersion = (models.find((m) => m.id === "kokoro") || models[0] || {}).version;
  const versions = [...new Set(models.map((m) => m.version))].sort();
  select.replaceChildren(...versions.map((version) => {
    const option = new Option(version === defaultVersion ? `${version} (default)` : version, version);
    option.selected = chosen ? version === chosen : version === defaultVersion;
    return option;
  }));
}

function fillVoices() {
  const mine = voices.filter((v) => v.model === $("model").value);
  $("voice-list").replaceChildren(...mine.map((v) => new Option(v.language, v.id)));
  const input = $("voice");
  const known = new Set(mine.map((v) => v.id));
  const typed = input.value.trim();
  // Whatever the user typed stays (a blend, or a name the service will judge); only an empty box, or a
  // voice of another version after switching versions, gets one this version has.
  const otherVersions = voices.some((v) => v.id === typed) && !known.has(typed);
  if ((!typed || otherVersions) && mine.length) {
    input.value = known.has("af_heart") ? "af_heart" : mine[0].id;
  }
  $("voice-hint").textContent = `${mine.length} voices; a blend: af_bella(2)+af_sky(1)`;
}

// ---- playing pcm as it arrives ----

class StreamPlayer {
  constructor() {
    this.context = new AudioContext({sampleRate: RATE});  // created on the click: allowed to play
    this.next = 0;        // context time at which the next chunk starts
    this.segments = [];   // [{at, speech, seconds}]: where each chunk sits in context and speech time
    this.parts = [];      // the Int16Array chunks, for the file at the end
    this.samples = 0;
  }

  push(bytes) {
    const ints = new Int16Array(bytes.buffer, bytes.byteOffset, bytes.length >> 1);
    if (!ints.length) return;
    const buffer = this.context.createBuffer(1, ints.length, RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < ints.length; i++) channel[i] = ints[i] / 32768;
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    // Back to back; after a gap (the network or the model was slower than playback), a little ahead of now.
    const at = Math.max(this.next, this.context.currentTime + 0.05);
    source.start(at);
    this.segments.push({at, speech: this.samples / RATE, seconds: ints.length / RATE});
    this.next = at + ints.length / RATE;
    this.samples += ints.length;
    this.parts.push(ints);
  }

  // Seconds of speech heard so far: word times count from the start of the speech, gaps excluded.
  position() {
    const now = this.context.currentTime;
    let heard = 0;
    for (const s of this.segments) {
      if (now < s.at) break;
      heard = s.speech + Math.min(now - s.at, s.seconds);
    }
    return heard;
  }

  get seconds() { return this.samples / RATE; }

  pcm() {
    const all = new Int16Array(this.samples);
    let at = 0;
    for (const part of this.parts) { all.set(part, at); at += part.length; }
    return new Uint8Array(all.buffer);
  }

  wav() {
    const pcm = this.pcm();
    const header = new DataView(new ArrayBuffer(44));
    const text = (at, s) => [...s].forEach((c, i) => header.setUint8(at + i, c.charCodeAt(0)));
    text(0, "RIFF"); header.setUint32(4, 36 + pcm.length, true); text(8, "WAVEfmt ");
    header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
    header.setUint32(24, RATE, true); header.setUint32(28, RATE * 2, true);
    header.setUint16(32, 2, true); header.setUint16(34, 16, true);
    text(36, "data"); header.setUint32(40, pcm.length, true);
    return new Blob([header, pcm], {type: "audio/wav"});
  }

  close() { this.context.close(); }
}

// ---- read-along ----

function addWords(words) {
  const box = $("read-along");
  if (!state.words.length && words.length) box.replaceChildren();
  for (const word of words) {
    const span = document.createElement("span");
    span.className = "word";
    span.textContent = word.word;
    box.append(span, " ");
    state.words.push({...word, span});
  }
}

function placeholder(text) {
  const note = document.createElement("span");
  note.className = "placeholder";
  note.textContent = text;
  $("read-along").replaceChildren(note);
}

// Each frame: words already heard, and the one being heard now, follow the audio clock.
function follow(player) {
  let heard = 0;
  let now = null;
  const step = () => {
    if (current?.player !== player) return;
    const t = state.playedSeconds = player.position();
    while (heard < state.words.length && state.words[heard].end <= t) {
      state.words[heard++].span.className = "word heard";
    }
    const word = state.words[heard];
    const speaking = word && word.start <= t ? heard : null;
    if (speaking !== now) {
      now = speaking;
      if (now !== null) {
        word.span.className = "word now";
        word.span.scrollIntoView({block: "nearest"});
        state.highlighted.push(now);
      }
    }
    if (state.done && t >= player.seconds) {
      state.played = true;
      finish();
      return;
    }
    requestAnimationFrame(step);
  };
  requestAnimationFrame(step);
}

// ---- speaking ----

function requestBody(format, seed) {
  const voice = $("voice").value.trim();
  return {model: $("model").value || "kokoro", input: $("text").value, voice: voice || undefined,
          response_format: format, speed: Number($("speed").value), seed};
}

async function speak() {
  stop();
  resetState();
  showError(null);
  $("result").hidden = true;
  placeholder("");
  for (const id of ["first-audio", "duration", "made"]) $(id).textContent = "–";
  // One seed for the stream and any file made later: the download is the speech that was heard.
  const seed = Math.floor(Math.random() * 2 ** 31);
  const player = new StreamPlayer();
  const controller = new AbortController();
  current = {controller, player, seed};
  setBusy(true, "Speaking…");
  const started = performance.now();
  const elapsed = () => (performance.now() - started) / 1000;
  try {
    const response = await api("v1/audio/speech/captioned", {
      method: "POST", body: JSON.stringify(requestBody("pcm", seed)), signal: controller.signal});
    follow(player);
    for await (const line of ndjsonLines(response)) {
      if (line.error) throw new Error(`The speech broke off: ${line.error.message}`);
      const bytes = base64Bytes(line.audio || "");
      if (bytes.length) {
        player.push(bytes);
        state.chunksReceived += 1;
        state.bytesReceived += bytes.length;
        if (state.firstAudioSeconds === null) showSeconds("first-audio", state.firstAudioSeconds = elapsed());
        showSeconds("duration", player.seconds);  // so far; the total once done
      }
      addWords(line.words || []);
      if (line.done) state.done = true;
    }
    if (!state.done) throw new Error("The stream ended before the speech was complete.");
    if (!state.words.length) placeholder("No word times for this speech (v0.19 and some texts give none).");
    showSeconds("made", state.madeSeconds = elapsed());
    showSeconds("duration", state.totalSeconds = player.seconds);
    offerFile(player);
  } catch (e) {
    if (e.name !== "AbortError") showError(e.message);
    if (current?.player === player) stop();
  }
}

function stop() {
  if (!current) return;
  current.controller.abort();
  current.player.close();
  current = null;
  setBusy(false, "");
}

function finish() {
  setBusy(false, "");
  $("stop").disabled = true;
}

function offerFile(player) {
  const replay = $("replay");
  if (replay.src) URL.revokeObjectURL(replay.src);
  replay.src = URL.createObjectURL(player.wav());
  const format = $("format").value;
  const download = $("download");
  download.textContent = `Download .${EXTENSIONS[format]}`;
  const body = requestBody(format, current.seed);
  download.onclick = () => saveFile(player, body);
  $("result").hidden = false;
}

// wav and pcm come from the audio already here; other formats are made again with the same seed.
async function saveFile(player, body) {
  const format = body.response_format;
  let blob;
  if (LOCAL_FORMATS.has(format)) {
    blob = format === "wav" ? player.wav() : new Blob([player.pcm()], {type: "audio/pcm"});
  } else {
    setBusy(true, `Making the ${format} file…`);
    try {
      const response = await api("v1/audio/speech", {method: "POST", body: JSON.stringify({...body, stream: false})});
      blob = await response.blob();
    } catch (e) {
      showError(e.message);
      return;
    } finally {
      setBusy(false, "");
    }
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `speech.${EXTENSIONS[format]}`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
}

// ---- page state ----

function setBusy(busy, status) {
  $("speak").disabled = busy;
  $("stop").disabled = !busy;
  $("status").textContent = status;
}

function showSeconds(id, seconds) {
  $(id).textContent = `${seconds.toFixed(2)} s`;
}

function showError(message) {
  state.error = message;
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

$("api-key").value = localStorage.getItem(KEY_STORE) || "";
$("api-key").addEventListener("change", () => {
  const key = $("api-key").value.trim();
  if (key) localStorage.setItem(KEY_STORE, key);
  else localStorage.removeItem(KEY_STORE);
  loadLists();
});
$("model").addEventListener("change", fillVoices);
$("speak").addEventListener("click", speak);
$("stop").addEventListener("click", stop);
resetState();
loadLists();
