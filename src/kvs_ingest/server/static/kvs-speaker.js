// kvs-speaker.js — a browser speaker for kvs-ingest (speaker protocol v1, DESIGN.md §4.4).
//
// Copy this file into your speaker app. It has no dependencies and no build step.
//
//   const speaker = new KvsSpeaker({session: "room-42", token, mimeType: "audio/webm;codecs=opus",
//                                   timeslice: 250});
//   speaker.addEventListener("change", () => render(speaker));   // state, seconds, errors
//   await speaker.start();          // asks for the microphone, connects, records, streams
//   ...
//   await speaker.stop();           // flushes: resolves once the server closed with 1000,
//                                   // i.e. everything sent is persisted in KVS
//
// What it does, and why:
// - One WebSocket per "leg" to /v1/sessions/{session}/speaker on the page's own host (wss: when
//   the page is https:), subprotocols ["kvs-ingest.v1", "bearer.<token>"]: browsers cannot set
//   an Authorization header on a WebSocket, so the token travels as a subprotocol.
// - Each MediaRecorder chunk (a Blob, every `timeslice` ms) is sent as one binary message, in
//   order. Only the first chunk of a recorder carries the container header, so every leg gets a
//   NEW MediaRecorder: after a reconnect the old recorder's later chunks would be undecodable.
// - `ready`, `ack {seq, persisted_ms}` and `error {code, message}` come back as JSON text.
//   `persisted_ms` counts this socket's audio that KVS has PERSISTED; the seconds persisted
//   shown are the sum over legs.
// - If the socket drops while recording (1006 abnormal, 1001 going away, 1011 server error,
//   1012 server restarting, 1013 try again later, 4503 KVS unavailable) it reconnects with
//   exponential backoff and jitter (at once for 1012: the session continues elsewhere). Any
//   other code (4400 bad message, 4401 token, 4403 forbidden, 4415 format, ...) is a client
//   problem that a retry would not fix: it stops and shows the error.
// - The session's audio in KVS continues across legs with a gap for the time it was away.
"use strict";

/** Close codes after which the speaker reconnects by itself (DESIGN.md §4.4). */
const KVS_RETRY_CODES = new Set([1001, 1006, 1011, 1012, 1013, 4503]);

/** What each close code means, for people. */
const KVS_CLOSE_REASONS = {
  1000: "stopped: everything persisted",
  1001: "server going away",
  1006: "connection lost",
  1009: "message too big",
  1011: "unexpected server error",
  1012: "server restarting",
  1013: "server at capacity",
  4400: "malformed message",
  4401: "token missing, invalid or expired",
  4403: "not allowed for this session or origin",
  4408: "no media in time, or idle",
  4409: "replaced by a newer connection of this session",
  4415: "audio format unsupported or undecodable",
  4429: "too fast or too many connections",
  4503: "KVS unavailable",
};

/** The audio types worth offering, best first; `supportedTypes()` keeps the browser's. */
const KVS_CANDIDATE_TYPES = [
  "audio/webm;codecs=opus",
  "audio/ogg;codecs=opus",
  "audio/mp4",
  "audio/webm;codecs=pcm",
  "audio/x-matroska;codecs=opus",
  "audio/x-matroska;codecs=pcm",
];

class KvsSpeaker extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.session      session id ([A-Za-z0-9_.-]{1,128})
   * @param {string} [o.token]      speaker token (JWT); omitted when the server has no auth
   * @param {string} [o.mimeType]   one of supportedTypes(); the browser's default when empty
   * @param {number} [o.timeslice]  ms of audio per chunk (250 is the service's default)
   * @param {string} [o.url]        WebSocket URL; default: this page's host
   * @param {MediaStream} [o.stream] audio to send; default: the microphone
   * @param {boolean} [o.keepChunks] keep every sent Blob in `sentChunks` (tests)
   */
  constructor(o) {
    super();
    this.session = o.session;
    this.token = o.token || "";
    this.mimeType = o.mimeType || "";
    this.timeslice = o.timeslice || 250;
    this.url = o.url || KvsSpeaker.defaultUrl(o.session);
    this.stream = o.stream || null;
    this.keepChunks = Boolean(o.keepChunks);
    this.backoff = {firstMs: 500, maxMs: 10000, maxAttempts: 8};

    // What the page shows. state: idle | connecting | ready | reconnecting | stopping |
    // stopped | error.
    this.state = "idle";
    this.sentSeconds = 0;
    this.persistedSeconds = 0;
    this.error = null; // {code, message} of the last error close or error message
    this.legs = 0; // sockets opened so far
    this.sentChunks = []; // [{leg, recorder, seq, blob}] when keepChunks
    this.recorderStarts = []; // [{leg, recorder, wallMs}]: when each recorder began (Date.now())
    this.closes = []; // [{leg, code}]: how each socket ended

    this.ws = null;
    this.recorder = null;
    this._leg = null; // per-socket counters, see _connect
    this._doneMs = {sent: 0, persisted: 0}; // totals of finished legs
    this._stopping = false;
    this._stopped = null; // {promise, resolve}
    this._retryTimer = null;
    this._attempt = 0;
    this._ownStream = false;
  }

  /** ws(s)://<this page's host>/v1/sessions/<session>/speaker */
  static defaultUrl(session) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/v1/sessions/${encodeURIComponent(session)}/speaker`;
  }

  /** The audio mimeTypes this browser's MediaRecorder accepts, best first. */
  static supportedTypes() {
    if (typeof MediaRecorder === "undefined") return [];
    return KVS_CANDIDATE_TYPES.filter((t) => MediaRecorder.isTypeSupported(t));
  }

  /** Opens the microphone (unless a stream was given) and the first socket. */
  async start() {
    if (this.state !== "idle" && this.state !== "stopped" && this.state !== "error") {
      throw new Error(`cannot start while ${this.state}`);
    }
    this.error = null;
    this._stopping = false;
    this._attempt = 0;
    this._stopped = null;
    this._doneMs = {sent: 0, persisted: 0};
    this.sentSeconds = 0;
    this.persistedSeconds = 0;
    this.sentChunks = [];
    this.recorderStarts = [];
    this.closes = [];
    if (!this.stream) {
      // Raw audio: echo cancellation, noise suppression and gain control are for calls, and
      // they distort what transcription hears (and turn a test tone into silence).
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: {
          echoCancellation: false,
          noiseSuppression: false,
          autoGainControl: false,
          channelCount: {ideal: 1},
        },
      });
      this._ownStream = true;
    }
    this._connect();
  }

  /**
   * Stops recording, sends {"type":"stop"} and waits until the server closes with 1000
   * (everything persisted). Resolves with the close code; the speaker can then start again.
   */
  stop() {
    if (this._stopped) return this._stopped.promise;
    let resolve;
    const promise = new Promise((r) => (resolve = r));
    this._stopped = {promise, resolve};
    this._stopping = true;
    clearTimeout(this._retryTimer);
    const leg = this._leg;
    if (!leg || !this.ws || this.ws.readyState !== WebSocket.OPEN) {
      // Not connected (between reconnects): nothing more can be flushed.
      if (this.ws) this.ws.close();
      this._finish(this.state === "error" ? "error" : "stopped", null);
      return promise;
    }
    this._set("stopping");
    // The recorder's last dataavailable comes before its stop event; send that chunk, then ask
    // the server to flush.
    const sendStop = () => {
      if (leg.ws.readyState === WebSocket.OPEN) leg.ws.send(JSON.stringify({type: "stop"}));
    };
    if (leg.recorder && leg.recorder.state !== "inactive") {
      leg.recorder.addEventListener("stop", () => leg.sending.then(sendStop), {once: true});
      leg.recorder.stop();
    } else {
      leg.sending.then(sendStop);
    }
    return promise;
  }

  /**
   * Stops the recorder and starts a new one on the same socket (e.g. after switching the
   * microphone). The server sees a new container header in the middle of the stream and
   * carries on. Resolves once the new recorder runs.
   */
  async restartRecorder() {
    const leg = this._leg;
    if (!leg || !leg.recorder || leg.recorder.state === "inactive") return;
    const old = leg.recorder;
    const stopped = new Promise((r) => old.addEventListener("stop", r, {once: true}));
    old.stop();
    await stopped;
    if (leg !== this._leg || this._stopping || leg.ws.readyState !== WebSocket.OPEN) return;
    leg.sentMsDone = leg.sentMs;
    this._record(leg);
  }

  /** Tests: drop the current socket as a network failure would (the speaker reconnects). */
  dropSocket() {
    if (this._leg) this._leg.simulatedDrop = true;
    if (this.ws) this.ws.close(4000, "dropped by the page");
  }

  // --- one leg: a socket and its own recorder ---------------------------------------------

  _connect() {
    const protocols = ["kvs-ingest.v1"];
    if (this.token) protocols.push("bearer." + this.token);
    const ws = new WebSocket(this.url, protocols);
    ws.binaryType = "arraybuffer";
    this.legs += 1;
    const leg = {
      number: this.legs,
      ws,
      recorder: null,
      recorders: 0, // recorders started on this socket (restartRecorder adds one)
      seq: 0,
      startedAt: 0, // when its current recorder started
      sentMsDone: 0, // ms recorded by its earlier recorders (restartRecorder)
      sentMs: 0,
      persistedMs: 0,
      sending: Promise.resolve(), // chains sends so chunks leave in order
      simulatedDrop: false,
    };
    this._leg = leg;
    this.ws = ws;
    this._set(this.legs === 1 ? "connecting" : "reconnecting");

    ws.onopen = () => this._record(leg);
    ws.onmessage = (ev) => this._message(leg, ev.data);
    ws.onclose = (ev) => this._closed(leg, ev);
  }

  _record(leg) {
    // A new recorder for every socket: its first chunk carries the container header.
    const options = this.mimeType ? {mimeType: this.mimeType} : {};
    const recorder = new MediaRecorder(this.stream, options);
    leg.recorder = recorder;
    leg.recorders += 1;
    const recorderNumber = leg.recorders;
    this.recorder = recorder;
    recorder.ondataavailable = (ev) => {
      if (ev.data.size === 0) return;
      const seq = leg.seq++;
      leg.sentMs = leg.sentMsDone + (performance.now() - leg.startedAt);
      this.sentSeconds = (this._doneMs.sent + leg.sentMs) / 1000;
      if (this.keepChunks) {
        this.sentChunks.push({leg: leg.number, recorder: recorderNumber, seq, blob: ev.data});
      }
      // WebSocket.send accepts a Blob, but blobs are read asynchronously; sending the
      // ArrayBuffer in a promise chain keeps the order explicit.
      leg.sending = leg.sending.then(async () => {
        const data = await ev.data.arrayBuffer();
        if (leg.ws.readyState === WebSocket.OPEN) leg.ws.send(data);
      });
      this._changed();
    };
    recorder.onerror = (ev) => {
      this.error = {code: null, message: `recorder error: ${ev.error && ev.error.name}`};
      this._changed();
    };
    leg.startedAt = performance.now();
    recorder.start(this.timeslice);
    this.recorderStarts.push({leg: leg.number, recorder: recorderNumber, wallMs: Date.now()});
  }

  _message(leg, data) {
    if (typeof data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg.type === "ready") {
      this._attempt = 0; // a leg that got this far resets the backoff
      if (this.legs > 1) this.error = null; // the reconnect worked: the drop is history
      if (!this._stopping) this._set("ready");
    } else if (msg.type === "ack") {
      leg.persistedMs = msg.persisted_ms;
      this.persistedSeconds = (this._doneMs.persisted + leg.persistedMs) / 1000;
      this._changed();
    } else if (msg.type === "error") {
      // The close follows; the server wants no more media on this socket (on a drain it reads
      // until we are quiet), so this leg's recorder stops now.
      this.error = {code: msg.code, message: msg.message};
      if (leg.recorder && leg.recorder.state !== "inactive") {
        leg.recorder.ondataavailable = null;
        leg.recorder.stop();
      }
      this._changed();
    }
  }

  _closed(leg, ev) {
    if (leg.recorder && leg.recorder.state !== "inactive") {
      leg.recorder.ondataavailable = null; // its later chunks have no socket to go to
      leg.recorder.stop();
    }
    this._doneMs.sent += leg.sentMs;
    this._doneMs.persisted += leg.persistedMs;
    this.closes.push({leg: leg.number, code: leg.simulatedDrop ? 1006 : ev.code});
    if (leg !== this._leg) return; // an old leg, already replaced
    if (this.state === "stopped" || this.state === "error") return; // stop() already ended it
    const code = leg.simulatedDrop ? 1006 : ev.code;
    if (this._stopping) {
      if (code === 1000) {
        this._finish("stopped", null);
      } else {
        this._finish("error", {code, message: this._reason(code, ev.reason)});
      }
      return;
    }
    if (KVS_RETRY_CODES.has(code) && this._attempt < this.backoff.maxAttempts) {
      this.error = {code, message: this._reason(code, ev.reason) + " — reconnecting"};
      const base = Math.min(this.backoff.maxMs, this.backoff.firstMs * 2 ** this._attempt);
      const delay = code === 1012 && this._attempt === 0 ? 0 : base / 2 + Math.random() * base / 2;
      this._attempt += 1;
      this._set("reconnecting");
      this._retryTimer = setTimeout(() => this._connect(), delay);
      return;
    }
    this._finish("error", {code, message: this._reason(code, ev.reason)});
  }

  _finish(state, error) {
    if (error) this.error = error;
    if (this.recorder && this.recorder.state !== "inactive") this.recorder.stop();
    if (this._ownStream && this.stream) {
      this.stream.getTracks().forEach((t) => t.stop());
      this.stream = null;
      this._ownStream = false;
    }
    this._set(state);
    if (this._stopped) this._stopped.resolve(error ? error.code : 1000);
  }

  /** A person's explanation of a close: what the code means, and what the server said. */
  _reason(code, reason) {
    const known = KVS_CLOSE_REASONS[code] || "closed";
    const said = this.error && this.error.code === code ? this.error.message : reason;
    return said && !said.startsWith(known) ? `${known}: ${said}` : known;
  }

  _set(state) {
    this.state = state;
    this._changed();
  }

  _changed() {
    this.dispatchEvent(new Event("change"));
  }
}

window.KvsSpeaker = KvsSpeaker;
