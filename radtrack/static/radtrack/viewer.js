/* RadTrack side-by-side viewer: baseline and follow-up on the baseline grid (NiiVue,
 * vendored under vendor/niivue). Both panes share one crosshair, so slices scroll
 * together; window presets, lesion contours, the probability map and "jump to lesion"
 * act on both. Lesion positions arrive in NiiVue's world frame (RAS mm). */
(function () {
  "use strict";
  var PRESETS = { lung: [1500, -600], soft: [400, 40], liver: [150, 30], bone: [1800, 400] };
  var PRESET_KEYS = ["lung", "soft", "liver", "bone"];
  var status = document.getElementById("viewer-status");
  var filesNode = document.getElementById("viewer-files");
  if (!filesNode || typeof niivue === "undefined") {
    if (status) status.textContent = "The image viewer could not start (viewer library missing).";
    return;
  }
  var files = JSON.parse(filesNode.textContent);
  var jumps = JSON.parse(document.getElementById("viewer-jumps").textContent);
  var state = { preset: "soft", contours: true, probability: false };
  var panes = [];

  function say(text) { if (status) status.textContent = text; }

  function layers(side) {
    var f = files[side] || {};
    var list = [{ url: f.volume, name: side + ".nii.gz", colormap: "gray" }];
    var slots = { mask: -1, probability: -1 };
    if (f.mask) {
      slots.mask = list.length;
      list.push({ url: f.mask, name: side + "-mask.nii.gz", colormap: "red", opacity: 0.9, cal_min: 0.5, cal_max: 1 });
    }
    if (f.probability) {
      slots.probability = list.length;
      list.push({ url: f.probability, name: side + "-probability.nii.gz", colormap: "warm", opacity: 0, cal_min: 0.1, cal_max: 1 });
    }
    return { list: list, slots: slots };
  }

  function windowApply(pane) {
    var p = PRESETS[state.preset];
    var vol = pane.nv.volumes[0];
    if (!vol) return;
    vol.cal_min = p[1] - p[0] / 2;
    vol.cal_max = p[1] + p[0] / 2;
    pane.nv.updateGLVolume();
  }

  function overlaysApply(pane) {
    if (pane.slots.mask >= 0) pane.nv.setOpacity(pane.slots.mask, state.contours ? 0.9 : 0);
    if (pane.slots.probability >= 0) pane.nv.setOpacity(pane.slots.probability, state.probability ? 0.5 : 0);
  }

  function everyPane(fn) { panes.forEach(fn); }

  function pressed(selector, on) {
    var node = document.querySelector(selector);
    if (node) node.setAttribute("aria-pressed", on ? "true" : "false");
  }

  function presetSet(key) {
    state.preset = key;
    document.querySelectorAll("[data-preset]").forEach(function (b) {
      b.setAttribute("aria-pressed", b.dataset.preset === key ? "true" : "false");
    });
    everyPane(windowApply);
    say("Window: " + key);
  }

  function jump(key) {
    var ras = jumps[key];
    if (!ras || !panes.length) return;
    everyPane(function (pane) {
      pane.nv.scene.crosshairPos = pane.nv.mm2frac(ras);
      pane.nv.drawScene();
      pane.nv.createOnLocationChange();
    });
    say("Showing " + key.replace(/^.*-/, "lesion row ") + " at " + ras.map(function (v) { return v.toFixed(1); }).join(", ") + " mm");
  }

  function step(delta) {
    everyPane(function (pane) { pane.nv.moveCrosshairInVox(0, 0, delta); });
  }

  async function paneStart(canvasId, side) {
    var nv = new niivue.Niivue({
      show3Dcrosshair: false,
      backColor: [0, 0, 0, 1],
      crosshairColor: [1, 0.85, 0.2, 1],
      isOrientationTextVisible: true,
      dragAndDropEnabled: false,
      overlayOutlineWidth: 1,
      // Radiological convention, as on every PACS: the patient's right on the screen's left.
      isRadiologicalConvention: true
    });
    await nv.attachTo(canvasId);
    nv.setSliceType(nv.sliceTypeAxial);
    var plan = layers(side);
    await nv.loadVolumes(plan.list);
    return { nv: nv, slots: plan.slots, canvas: document.getElementById(canvasId) };
  }

  async function start() {
    try {
      var pairs = [["viewer-baseline", "baseline"], ["viewer-follow-up", "follow_up"]];
      for (var i = 0; i < pairs.length; i++) {
        if (files[pairs[i][1]]) panes.push(await paneStart(pairs[i][0], pairs[i][1]));
      }
      if (panes.length === 2) {
        panes[0].nv.broadcastTo(panes[1].nv, { "2d": true, "3d": true });
        panes[1].nv.broadcastTo(panes[0].nv, { "2d": true, "3d": true });
      }
      everyPane(function (pane) { windowApply(pane); overlaysApply(pane); });
      document.body.dataset.viewerReady = "true";
      say("Images loaded. Choose a lesion to jump to it.");
    } catch (error) {
      document.body.dataset.viewerReady = "error";
      say("The images could not be shown: " + (error && error.message ? error.message : error));
    }
  }

  document.querySelectorAll("[data-preset]").forEach(function (button) {
    button.addEventListener("click", function () { presetSet(button.dataset.preset); });
  });
  var prob = document.getElementById("toggle-probability");
  if (prob) prob.addEventListener("click", function () {
    state.probability = !state.probability;
    pressed("#toggle-probability", state.probability);
    everyPane(overlaysApply);
  });
  var contours = document.getElementById("toggle-contours");
  if (contours) contours.addEventListener("click", function () {
    state.contours = !state.contours;
    pressed("#toggle-contours", state.contours);
    everyPane(overlaysApply);
  });
  document.querySelectorAll("[data-jump]").forEach(function (button) {
    button.addEventListener("click", function () {
      jump(button.dataset.jump);
      document.getElementById("viewer-baseline").focus();
    });
  });
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target && /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) return;
    var onImage = target && target.tagName === "CANVAS";
    if (event.key === "PageUp" || (onImage && (event.key === "ArrowUp" || event.key === "ArrowRight"))) {
      step(1); event.preventDefault();
    } else if (event.key === "PageDown" || (onImage && (event.key === "ArrowDown" || event.key === "ArrowLeft"))) {
      step(-1); event.preventDefault();
    } else if (event.key >= "1" && event.key <= "4" && !event.ctrlKey && !event.metaKey) {
      presetSet(PRESET_KEYS[Number(event.key) - 1]);
    } else if (event.key === "p" && prob) {
      prob.click();
    } else if (event.key === "c" && contours) {
      contours.click();
    }
  });
  window.radtrackViewer = { panes: panes, state: state, jump: jump, step: step };
  start();
})();
