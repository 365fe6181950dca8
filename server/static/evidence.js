// digitgrad drawing page: the evidence map over "what the model saw". Plain browser JavaScript.
// POST /predict?explain=1 answers `attributions`, 28x28 integrated gradients of the predicted
// digit's logit: positive where a pixel's ink made that digit more likely, negative where it
// spoke against it. They are drawn as a colour over the ink: red for, blue against, the
// strongest pixel in full colour; the legend in index.html shows the same scale.
// app.js calls show(body) with each answer and hide() when it clears one.
"use strict";

window.digitgradEvidence = (function () {
  // RdBu's ends; style.css's .evidence-legend .scale gradient uses the same three colours
  const FOR = [215, 48, 39];
  const AGAINST = [33, 102, 172];
  const canvas = document.getElementById("evidence");
  const legend = document.getElementById("evidence-legend");
  const digitEl = document.getElementById("evidence-digit");
  const toggle = document.getElementById("show-evidence");

  // Paint `attributions` (28 rows of 28 numbers) into the 28x28 canvas; false if there is
  // nothing to show (no map, or every value 0: a blank image).
  function draw(attributions) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!Array.isArray(attributions) || attributions.length !== canvas.height) return false;
    let scale = 0;
    for (const row of attributions) for (const a of row) scale = Math.max(scale, Math.abs(a));
    if (!(scale > 0)) return false;
    const pixels = ctx.createImageData(canvas.width, canvas.height);
    attributions.forEach((row, y) => {
      row.forEach((a, x) => {
        const colour = a > 0 ? FOR : AGAINST;
        const i = 4 * (y * canvas.width + x);
        pixels.data[i] = colour[0];
        pixels.data[i + 1] = colour[1];
        pixels.data[i + 2] = colour[2];
        pixels.data[i + 3] = Math.round((255 * Math.abs(a)) / scale); // linear, as the legend
      });
    });
    ctx.putImageData(pixels, 0, 0);
    return true;
  }

  function hide() {
    canvas.hidden = true;
    legend.hidden = true;
  }

  function show(body) {
    if (!draw(body.attributions)) {
      hide();
      return;
    }
    digitEl.textContent = String(body.digit);
    legend.hidden = false;
    canvas.hidden = !toggle.checked;
  }

  toggle.addEventListener("change", () => {
    if (!legend.hidden) canvas.hidden = !toggle.checked;
  });

  return { show, hide };
})();
