// digitgrad drawing page: plain browser JavaScript, no build step, no network except our API.
"use strict";

(function () {
  const canvas = document.getElementById("canvas");
  const ctx = canvas.getContext("2d");
  const dropzone = document.getElementById("dropzone");
  const fileInput = document.getElementById("file");
  const clearButton = document.getElementById("clear");
  const statusEl = document.getElementById("status");
  const digitEl = document.getElementById("digit");
  const confidenceEl = document.getElementById("confidence");
  const barsEl = document.getElementById("bars");
  const seenEl = document.getElementById("seen");
  const numberDigitsEl = document.getElementById("number-digits");
  const modeInputs = document.querySelectorAll('input[name="mode"]');

  // Thick round strokes, dark on white: close to a marker on paper, which the server's
  // preprocessing turns into MNIST's light-on-black 20x20 box.
  const BRUSH = canvas.height / 14;
  // "digit": POST /predict, one digit and its ten probabilities. "number": POST
  // /predict/number on a canvas twice as wide, each digit read left to right.
  let mode = "digit";
  let drawing = false;
  let last = null;
  let dirty = false; // anything drawn since the last Clear?
  let request = 0; // only the newest answer is shown
  let controller = null;
  let timer = null;

  const bars = [];
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.innerHTML =
      '<span class="label"></span><span class="bar" aria-hidden="true"><span></span></span>' +
      '<span class="value"></span>';
    li.querySelector(".label").textContent = String(d);
    barsEl.appendChild(li);
    bars.push(li);
  }

  function resetCanvas() {
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.restore();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = BRUSH;
    ctx.strokeStyle = "#111";
    ctx.fillStyle = "#111";
  }

  function resetResult(message) {
    digitEl.textContent = "–";
    confidenceEl.textContent = "";
    for (const li of bars) {
      li.classList.remove("top");
      li.querySelector(".bar span").style.width = "0%";
      li.querySelector(".value").textContent = "";
    }
    seenEl.hidden = true;
    seenEl.removeAttribute("src");
    window.digitgradEvidence.hide();
    numberDigitsEl.replaceChildren();
    numberDigitsEl.hidden = true;
    barsEl.hidden = mode === "number";
    setStatus(message, false);
  }

  function startMessage() {
    return mode === "number" ? "Write a number, its digits apart." : "Draw a digit to start.";
  }

  function setStatus(message, isError) {
    statusEl.textContent = message;
    statusEl.classList.toggle("error", Boolean(isError));
  }

  // canvas pixels under the pointer, whatever the CSS size of the canvas
  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) * canvas.width) / rect.width,
      y: ((event.clientY - rect.top) * canvas.height) / rect.height,
    };
  }

  function dot(p) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, BRUSH / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function lineTo(p) {
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    last = p;
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (event.button !== 0 && event.pointerType === "mouse") return;
    event.preventDefault();
    try {
      canvas.setPointerCapture(event.pointerId); // keep the stroke when the finger leaves the canvas
    } catch (err) {
      // synthetic or already-released pointers cannot be captured; drawing works without it
    }
    clearTimeout(timer);
    drawing = true;
    dirty = true;
    last = point(event);
    dot(last);
  });

  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    event.preventDefault();
    // coalesced events give the full-rate path on fast finger or pen movement
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) lineTo(point(e));
  });

  function endStroke(event) {
    if (!drawing) return;
    drawing = false;
    if (canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
    // a short pause so a digit drawn in several strokes is sent once, after its last stroke
    clearTimeout(timer);
    timer = setTimeout(sendCanvas, 350);
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  function sendCanvas() {
    if (!dirty) return;
    canvas.toBlob((blob) => predict(blob, "drawing.png"), "image/png");
  }

  async function predict(blob, name) {
    const id = ++request;
    if (controller) controller.abort();
    controller = new AbortController();
    const form = new FormData();
    form.append("image", blob, name);
    setStatus("Recognising…", false);
    let response;
    let body;
    try {
      // one digit comes with its evidence map (evidence.js)
      const url = mode === "number" ? "/predict/number?debug=1" : "/predict?debug=1&explain=1";
      response = await fetch(url, {
        method: "POST", body: form, signal: controller.signal,
      });
      body = await response.json();
    } catch (err) {
      if (id !== request || err.name === "AbortError") return;
      resetResult("");
      setStatus("The server could not be reached. Try again in a moment.", true);
      return;
    }
    if (id !== request) return; // a newer drawing or file superseded this one
    if (!response.ok && body && body.error && body.error.code === "not_a_digit") {
      showNotADigit(body.error.closest);
      return;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
      resetResult("");
      setStatus(message, true);
      return;
    }
    if (body.number !== undefined) showNumber(body);
    else show(body);
  }

  // the model does not take the drawing (or a piece of it) for a digit: say so, and show the
  // closest guess it would have given, with its honest (low) confidence
  function showNotADigit(closest) {
    if (closest.number !== undefined) {
      showNumber(closest);
      const pieces = closest.digits.filter((d) => !d.is_digit).length;
      setStatus(`That doesn't look like a number: ${pieces} of its ${closest.digits.length} ` +
                `pieces do not look like digits. The closest guess: ${closest.number}.`, true);
      return;
    }
    show(closest);
    setStatus("That doesn't look like a digit. The closest guess: " +
              `${closest.digit} (${(100 * closest.confidence).toFixed(1)}%).`, true);
  }

  // one entry per digit: what the model saw, the digit, how sure
  function showNumber(body) {
    digitEl.textContent = body.number;
    const least = Math.min(...body.digits.map((d) => d.confidence));
    confidenceEl.textContent = `least sure digit ${(100 * least).toFixed(1)}%`;
    numberDigitsEl.replaceChildren();
    for (const d of body.digits) {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${d.debug_image}`;
      img.width = 56;
      img.height = 56;
      img.alt = `The 28 by 28 image read as ${d.digit}`;
      const read = document.createElement("span");
      read.className = "read";
      read.textContent = String(d.digit);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = `${(100 * d.confidence).toFixed(1)}%`;
      li.append(img, read, value);
      numberDigitsEl.appendChild(li);
    }
    numberDigitsEl.hidden = false;
    setStatus(`The model reads ${body.number} (${body.digits.length} digits).`, false);
  }

  function show(body) {
    const probabilities = body.probabilities;
    digitEl.textContent = String(body.digit);
    confidenceEl.textContent = `${(100 * body.confidence).toFixed(1)}% sure`;
    probabilities.forEach((p, d) => {
      const li = bars[d];
      li.classList.toggle("top", d === body.digit);
      li.querySelector(".bar span").style.width = `${(100 * p).toFixed(1)}%`;
      li.querySelector(".value").textContent = `${(100 * p).toFixed(1)}%`;
    });
    if (body.debug_image) {
      seenEl.src = `data:image/png;base64,${body.debug_image}`;
      seenEl.hidden = false;
      window.digitgradEvidence.show(body);
    }
    setStatus(`The model says ${body.digit} (${(100 * body.confidence).toFixed(1)}%).`, false);
  }

  // show a chosen or dropped file on the canvas (fitted, on white), and send the file itself
  function useFile(file) {
    if (!file) return;
    clearTimeout(timer);
    resetCanvas();
    dirty = false;
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      const scale = Math.min(canvas.width / img.width, canvas.height / img.height);
      const w = img.width * scale;
      const h = img.height * scale;
      ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
      URL.revokeObjectURL(url);
    };
    img.onerror = () => URL.revokeObjectURL(url); // e.g. TIFF: the server may still read it
    img.src = url;
    predict(file, file.name || "upload");
  }

  fileInput.addEventListener("change", () => {
    useFile(fileInput.files[0]);
    fileInput.value = ""; // choosing the same file again still fires "change"
  });

  dropzone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  });
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("dragging"));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) useFile(file);
  });

  clearButton.addEventListener("click", () => {
    clearTimeout(timer);
    request++; // drop any answer still on its way
    if (controller) controller.abort();
    dirty = false;
    resetCanvas();
    resetResult(`Cleared. ${startMessage()}`);
  });

  // the checked mode (a browser may restore it on reload); switching starts afresh: the
  // canvas changes shape, and an answer on its way is dropped
  function applyMode() {
    const checked = document.querySelector('input[name="mode"]:checked');
    mode = checked ? checked.value : "digit";
    clearTimeout(timer);
    request++;
    if (controller) controller.abort();
    dirty = false;
    canvas.width = mode === "number" ? 2 * canvas.height : canvas.height;
    dropzone.classList.toggle("wide", mode === "number");
    canvas.setAttribute("aria-label", mode === "number"
      ? "Drawing canvas: write a number here, digits apart, or drop an image file"
      : "Drawing canvas: draw one digit here, or drop an image file");
    resetCanvas();
    resetResult(startMessage());
  }
  for (const input of modeInputs) input.addEventListener("change", applyMode);

  applyMode();
})();
