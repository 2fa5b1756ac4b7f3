/* convscope Live page (Yosinski et al. 2015's live view): plays a video's frames, the webcam or
   a still image through the saved model, one frame at a time.

   Each frame is one model-sized PNG/JPEG posted to the server (config.path); the answer is one
   small PNG of the layer's channel grid (or an fc layer's bars), the zoomed channel and the
   model's top-5 classes. One request is in flight at a time; a newer frame replaces one that
   waits, so a slow server drops frames instead of queueing them. Dash calls
   dash_clientside.convscopeLive.update when the run/layer, a decoded video, the still image or
   the webcam button changes. window.convscopeLive.last holds the last answer with the frame it
   was computed for (tests read it). Text from the server is set with textContent only. */
(function () {
  "use strict";
  const L = {
    config: null, source: null, frames: [], times: [], fps: 10, idx: 0, playing: false,
    stream: null, busy: false, pending: null, current: null, zoom: null, last: null,
    stillId: null, still: null, videoId: null, received: [], sent: 0, errors: 0, timer: null,
    webcamClicks: 0,
  };
  window.convscopeLive = L;

  function el(id) { return document.getElementById(id); }
  function make(tag, attrs, parent) {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") e.textContent = v; else if (k === "cls") e.className = v;
      else e.setAttribute(k, v);
    });
    if (parent) parent.appendChild(e);
    return e;
  }

  function panel() {
    const root = el("live-panel");
    if (!root) return null;
    if (root.dataset.built === "1") return root;
    root.dataset.built = "1";
    root.textContent = "";
    // a fresh page: forget what the last one played
    if (L.stream) L.stream.getTracks().forEach((t) => t.stop());
    Object.assign(L, {source: null, frames: [], times: [], playing: false, stream: null,
                      pending: null, current: null, zoom: null, last: null, stillId: null,
                      still: null, videoData: null, received: []});
    const row = make("div", {cls: "lv-row"}, root);
    const src = make("div", {cls: "lv-col lv-source"}, row);
    make("div", {cls: "lv-cap", id: "lv-source-cap", text: "Input"}, src);
    make("img", {id: "lv-input", cls: "lv-pix lv-input", alt: "the frame the model sees"}, src);
    const player = make("div", {id: "lv-player", cls: "lv-player", style: "display:none"}, src);
    const play = make("button", {id: "lv-play", cls: "button", text: "Pause"}, player);
    const slider = make("input", {id: "lv-slider", type: "range", min: "0", max: "0",
                                  value: "0", step: "1"}, player);
    make("span", {id: "lv-frame", cls: "muted"}, player);
    make("div", {id: "lv-rate", cls: "muted"}, src);
    const gridBox = make("div", {cls: "lv-col lv-gridbox"}, row);
    make("div", {cls: "lv-cap", id: "lv-grid-cap", text: "Pick a run and a layer"}, gridBox);
    const grid = make("img", {id: "lv-grid", cls: "lv-pix lv-grid",
                              title: "click a channel to zoom it", alt: "channel grid"}, gridBox);
    make("div", {cls: "muted", id: "lv-grid-note"}, gridBox);
    const zoomBox = make("div", {cls: "lv-col lv-zoom"}, row);
    make("div", {cls: "lv-cap", id: "lv-zoom-cap", text: "Click a channel to zoom it"}, zoomBox);
    make("img", {id: "lv-zoom", cls: "lv-pix lv-zoom-img", alt: "zoomed channel",
                 style: "display:none"}, zoomBox);
    make("div", {cls: "muted", id: "lv-zoom-range"}, zoomBox);
    const topBox = make("div", {cls: "lv-col lv-top"}, row);
    make("div", {cls: "lv-cap", text: "Top-5 classes (softmax)"}, topBox);
    make("div", {id: "lv-top5"}, topBox);
    make("div", {cls: "muted", id: "lv-top-note"}, topBox);
    make("div", {id: "lv-error", cls: "notice notice-bad", style: "display:none"}, root);
    make("video", {id: "lv-video", muted: "", playsinline: "", style: "display:none"}, root);
    make("canvas", {id: "lv-canvas", style: "display:none"}, root);
    play.addEventListener("click", () => setPlaying(!L.playing));
    slider.addEventListener("input", () => {
      setPlaying(false);
      showFrame(parseInt(slider.value, 10) || 0);
    });
    grid.addEventListener("click", onGridClick);
    grid.addEventListener("load", () => fitImage(grid, 420, 16));
    return root;
  }

  function fitImage(img, box, most) {
    const w = img.naturalWidth, h = img.naturalHeight;
    if (!w || !h) return;
    const k = Math.max(1, Math.min(most, Math.floor(box / Math.max(w, h))));
    img.style.width = (w * k) + "px";
    img.style.height = (h * k) + "px";
  }

  function showError(text) {
    const e = el("lv-error");
    if (!e) return;
    e.textContent = text || "";
    e.style.display = text ? "" : "none";
  }

  function setPlaying(on) {
    L.playing = !!on && L.source === "video" && L.frames.length > 0;
    const b = el("lv-play");
    if (b) b.textContent = L.playing ? "Pause" : "Play";
    if (L.timer) { clearTimeout(L.timer); L.timer = null; }
    if (L.playing && !L.busy) next();
  }

  function showFrame(i) {
    const n = L.frames.length;
    if (!n) return;
    L.idx = ((i % n) + n) % n;
    const slider = el("lv-slider");
    if (slider) slider.value = String(L.idx);
    const lab = el("lv-frame");
    if (lab) lab.textContent = `frame ${L.idx + 1} / ${n}` +
      (L.times[L.idx] !== undefined ? ` (${L.times[L.idx].toFixed(2)} s)` : "");
    send(L.frames[L.idx], {frame: L.idx, source: "video"});
  }

  function grabWebcam() {
    const v = el("lv-video"), c = el("lv-canvas");
    if (!L.stream || !v || !c || !L.config || !L.config.shape || !v.videoWidth) return null;
    const [ch, h, w] = L.config.shape;
    c.width = w; c.height = h;
    const ctx = c.getContext("2d");
    // centre crop to the model's aspect, then shrink to its input size
    const vw = v.videoWidth, vh = v.videoHeight;
    const s = Math.min(vw / w, vh / h);
    const sw = w * s, sh = h * s;
    ctx.drawImage(v, (vw - sw) / 2, (vh - sh) / 2, sw, sh, 0, 0, w, h);
    return w * h <= 128 * 128 ? c.toDataURL("image/png") : c.toDataURL("image/jpeg", 0.9);
  }

  function next() {
    if (L.timer) { clearTimeout(L.timer); L.timer = null; }
    if (!el("live-panel")) {  // the user left the page: stop
      L.playing = false;
      if (L.stream) L.stream.getTracks().forEach((t) => t.stop());
      L.stream = null;
      return;
    }
    const now = performance.now();
    if (L.source === "video" && L.playing) {
      const wait = Math.max(0, (L.lastSent || 0) + 1000 / L.fps - now);
      L.timer = setTimeout(() => { L.timer = null; if (L.playing) showFrame(L.idx + 1); }, wait);
    } else if (L.source === "webcam" && L.stream) {
      const wait = Math.max(0, (L.lastSent || 0) + 1000 / 30 - now);
      L.timer = setTimeout(() => {
        L.timer = null;
        const uri = grabWebcam();
        if (uri) send(uri, {frame: L.sent, source: "webcam"});
        else L.timer = setTimeout(next, 50);
      }, wait);
    }
  }

  async function send(uri, tag) {
    L.current = {uri: uri, tag: tag};
    const inp = el("lv-input");
    if (inp) { inp.src = uri; }
    if (!L.config || !L.config.run || L.config.error) return;
    if (L.busy) { L.pending = {uri: uri, tag: tag}; return; }
    L.busy = true;
    L.lastSent = performance.now();
    L.sent += 1;
    const body = {run: L.config.run, layer: L.config.layer, image: uri, zoom: L.zoom,
                  frame: typeof tag.frame === "number" ? tag.frame : null};
    const cfg = L.config;
    try {
      const r = await fetch(cfg.path, {method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
      let ans;
      try { ans = await r.json(); } catch (e) {
        ans = {error: `the server answered ${r.status} (${(await r.text()).slice(0, 200)})`};
      }
      if (cfg === L.config) render(ans, uri, tag);
    } catch (e) {
      L.errors += 1;
      showError("Cannot reach the server: " + e);
    } finally {
      L.busy = false;
      if (L.pending) {
        const p = L.pending; L.pending = null; send(p.uri, p.tag);
      } else {
        next();
      }
    }
  }

  function render(ans, uri, tag) {
    if (!ans || ans.error) {
      L.errors += 1;
      showError(ans ? ans.error : "no answer");
      L.last = {answer: ans, input: uri, frame: tag.frame, source: tag.source};
      return;
    }
    showError("");
    const t = performance.now();
    L.received.push(t);
    if (L.received.length > 60) L.received.shift();
    L.last = {answer: ans, input: uri, frame: tag.frame, source: tag.source, at: t};
    const grid = el("lv-grid");
    if (grid) grid.src = ans.grid;
    const cap = el("lv-grid-cap");
    if (cap) cap.textContent = ans.kind === "vector"
      ? `${ans.layer}: ${ans.channels} values, one bar each in order (one scale, ` +
        `${fmt(ans.lo)} .. ${fmt(ans.hi)})`
      : `${ans.layer}: ${ans.channels} channels`;
    const note = el("lv-grid-note");
    if (note) note.textContent = ans.note ? "Showing " + ans.note + "." : "";
    const zimg = el("lv-zoom"), zcap = el("lv-zoom-cap"), zr = el("lv-zoom-range");
    if (ans.zoom && zimg) {
      zimg.src = ans.zoom.image;
      zimg.style.display = "";
      zimg.onload = () => fitImage(zimg, 240, 64);
      zcap.textContent = `Channel ${ans.zoom.channel} of ${ans.layer}`;
      zr.textContent = `values ${fmt(ans.zoom.lo)} .. ${fmt(ans.zoom.hi)}`;
    } else if (zimg) {
      zimg.style.display = "none";
      zcap.textContent = ans.kind === "vector" ? "Zoom is for conv layers"
        : (ans.zoom_note || "Click a channel to zoom it");
      zr.textContent = "";
    }
    const top = el("lv-top5");
    if (top) {
      top.textContent = "";
      (ans.top || []).forEach((c) => {
        const r = make("div", {cls: "lv-bar-row"}, top);
        make("span", {cls: "lv-bar-name", text: c.name, title: `class ${c.index}`}, r);
        const track = make("span", {cls: "lv-bar-track"}, r);
        make("span", {cls: "lv-bar-fill", style: `width:${(100 * c.p).toFixed(1)}%`}, track);
        make("span", {cls: "lv-bar-p", text: c.p.toFixed(3)}, r);
      });
    }
    const tn = el("lv-top-note");
    if (tn) tn.textContent = ans.top_note || "";
    const rate = el("lv-rate");
    const recent = L.received.filter((r) => r > t - 3000);  // the last 3 s
    if (rate && (tag.source === "video" || tag.source === "webcam") && recent.length > 2) {
      const span = (recent[recent.length - 1] - recent[0]) / 1000;
      const fps = span > 0 ? (recent.length - 1) / span : 0;
      rate.textContent = `${fps.toFixed(1)} frames/s (server ${ans.ms.toFixed(1)} ms a frame)`;
      L.rate = fps;
    } else if (rate) {
      rate.textContent = `server ${ans.ms.toFixed(1)} ms a frame`;
    }
  }

  function fmt(v) {
    if (typeof v !== "number") return "";
    return Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2)
      : v.toFixed(3);
  }

  function onGridClick(ev) {
    const a = L.last && L.last.answer;
    const img = ev.currentTarget;
    if (!a || a.kind !== "map" || !img.naturalWidth) return;
    const r = img.getBoundingClientRect();
    const x = (ev.clientX - r.left) / r.width * img.naturalWidth;
    const y = (ev.clientY - r.top) / r.height * img.naturalHeight;
    const sx = a.tw + a.gap, sy = a.th + a.gap;
    const col = Math.floor(x / sx), row = Math.floor(y / sy);
    if (x - col * sx >= a.tw || y - row * sy >= a.th) return;  // on a gap
    const pos = row * a.cols + col;
    const shown = a.shown || null;
    const n = shown ? shown.length : a.channels;
    if (col >= a.cols || pos >= n) return;
    zoomTo(shown ? shown[pos] : pos);
  }

  function zoomTo(channel) {
    L.zoom = channel;
    if (window.dash_clientside && window.dash_clientside.set_props && L.config) {
      window.dash_clientside.set_props("live-zoom",
        {data: {layer: L.config.layer, channel: channel}});
    }
    if (L.current && !(L.source === "video" && L.playing) && L.source !== "webcam") {
      send(L.current.uri, L.current.tag);
    }
  }
  L.zoomTo = zoomTo;

  function setSource(source) {
    if (source !== L.source) L.received = [];
    L.source = source;
    const box = el("live-still-box");  // the still image's hover grid: only for a still
    if (box) box.style.display = source === "video" || source === "webcam" ? "none" : "";
  }

  function stopWebcam() {
    if (L.stream) L.stream.getTracks().forEach((t) => t.stop());
    L.stream = null;
    const b = el("live-webcam");
    if (b) b.textContent = "Start webcam";
  }

  async function startWebcam() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showError("This browser gives no camera here (the page must be served from localhost " +
                "or over https).");
      return;
    }
    try {
      L.stream = await navigator.mediaDevices.getUserMedia({video: true, audio: false});
    } catch (e) {
      showError("Cannot open the camera: " + e.name + " (" + e.message + "): allow the " +
                "camera for this page, or use a video file.");
      return;
    }
    const v = el("lv-video");
    v.srcObject = L.stream;
    await v.play().catch(() => {});
    setPlaying(false);
    setSource("webcam");
    const b = el("live-webcam");
    if (b) b.textContent = "Stop webcam";
    const cap = el("lv-source-cap");
    if (cap) cap.textContent = "Webcam (shrunk to the model's input)";
    el("lv-player").style.display = "none";
    if (!L.busy) next();
  }
  L.startWebcam = startWebcam;
  L.stopWebcam = stopWebcam;

  function update(config, video, still, clicks) {
    const root = panel();
    const trig = ((window.dash_clientside || {}).callback_context || {}).triggered || [];
    const changed = trig.map((t) => t.prop_id);
    if (!root) return window.dash_clientside.no_update;
    const configChanged = JSON.stringify(config) !== JSON.stringify(L.config);
    if (configChanged) {
      const layerChanged = !L.config || !config || L.config.layer !== config.layer;
      L.config = config || null;
      if (layerChanged) { L.zoom = null; }
      showError(config && config.error ? config.error : "");
    }
    if (changed.includes("live-webcam.n_clicks") && clicks && clicks !== L.webcamClicks) {
      L.webcamClicks = clicks;
      if (L.stream) {
        stopWebcam();
        setSource(L.still ? "still" : null);
        if (L.still) send(L.still.uri, {frame: null, source: "still"});
      } else {
        startWebcam();
      }
      return window.dash_clientside.no_update;
    }
    if (changed.includes("live-video.data") && video && video.frames && video.frames.length) {
      L.videoData = video;
      stopWebcam();
      setSource("video");
      L.frames = video.frames;
      L.times = video.times || [];
      L.fps = Math.max(0.5, Math.min(30, video.fps || 10));
      const slider = el("lv-slider");
      slider.max = String(L.frames.length - 1);
      el("lv-player").style.display = "";
      el("lv-source-cap").textContent = "Video: " + (video.name || "");
      L.idx = 0;
      L.playing = true;
      el("lv-play").textContent = "Pause";
      showFrame(0);
      return window.dash_clientside.no_update;
    }
    if (still && still.uri && still.id !== L.stillId) {
      L.stillId = still.id;
      L.still = still;
      stopWebcam();
      setPlaying(false);
      el("lv-player").style.display = "none";
      setSource("still");
      el("lv-source-cap").textContent = "Image: " + still.id;
      send(still.uri, {frame: null, source: "still"});
      return window.dash_clientside.no_update;
    }
    if (configChanged && L.current && !(L.source === "video" && L.playing) &&
        L.source !== "webcam") {
      send(L.current.uri, L.current.tag);  // the same frame through the new layer
    }
    return window.dash_clientside.no_update;
  }

  window.dash_clientside = Object.assign({}, window.dash_clientside, {
    convscopeLive: {update: update},
  });
})();
