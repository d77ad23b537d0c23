/* RadTrack viewer corrections (reviewers only): add a lesion the segmenter missed with one
 * click, and edit a lesion's mask with NiiVue's drawing (brush, eraser) plus grow and
 * shrink. Both call the REST API the other clients use:
 *   POST /api/v1/studies/{uid}/lesions/   {"seed_lps_mm": [x, y, z]}  (the study's own LPS)
 *        or {"seed_lps_mm": [x, y, z], "seed_frame": "baseline", "registration": id}
 *   PUT  /api/v1/measurements/{id}/mask   the edited mask as NIfTI on the study's own grid
 * A click lands in NiiVue's world frame (RAS mm of the grid the pane shows); the page
 * gives each pane the matrix to that study's own LPS, exact unless the pane shows a
 * follow-up through a deformable registration (no matrix holds a B-spline): then the
 * click is sent in the pane's frame, the baseline's LPS, with the registration, and the
 * server carries it through the full transform. After a change the page reloads, so
 * every number on it comes from the recomputed tracking, responses and risk. */
(function () {
  "use strict";
  var node = document.getElementById("viewer-correction");
  var viewer = window.radtrackViewer;
  var status = document.getElementById("viewer-status");
  if (!node || !viewer) return;
  var ctx = JSON.parse(node.textContent);
  var addButton = document.getElementById("add-lesion");
  var tools = document.getElementById("mask-tools");
  var state = { adding: false, busy: false, editing: null };

  function say(text) { if (status) status.textContent = text; }
  function mark(value) { document.body.dataset.correction = value; }

  function csrf() {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function sideOf(pane) { return pane.canvas.id === "viewer-baseline" ? "baseline" : "follow_up"; }
  function paneOf(side) {
    for (var i = 0; i < viewer.panes.length; i++) if (sideOf(viewer.panes[i]) === side) return viewer.panes[i];
    return null;
  }

  function mm(p) { return p.map(function (v) { return v.toFixed(1); }).join(", "); }

  function apply(matrix, p) {
    return [0, 1, 2].map(function (r) {
      return matrix[r][0] * p[0] + matrix[r][1] * p[1] + matrix[r][2] * p[2] + matrix[r][3];
    });
  }

  async function send(method, url, body, type) {
    var response = await fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": type, "X-CSRFToken": csrf(), "Accept": "application/json" },
      body: body
    });
    var data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    return { ok: response.ok, status: response.status, data: data };
  }

  function detail(data) {
    if (data && data.detail) return data.detail;
    return Object.keys(data || {}).map(function (k) { return k + ": " + data[k]; }).join("; ");
  }

  // ------------------------------------------------------------------ add a lesion
  function addingSet(on) {
    state.adding = on;
    if (addButton) addButton.setAttribute("aria-pressed", on ? "true" : "false");
    say(on ? "Click the centre of the lesion the segmenter missed, on either image." : "Adding a lesion: off.");
  }

  async function addAt(pane) {
    var side = sideOf(pane);
    var cfg = ctx.sides[side];
    if (!cfg || state.busy) return;
    var ras = Array.from(pane.nv.frac2mm(pane.nv.scene.crosshairPos)).slice(0, 3);
    var lps = [-ras[0], -ras[1], ras[2]];
    var body, where;
    if (cfg.to_own_lps_exact) {
      body = { seed_lps_mm: apply(cfg.to_own_lps, lps) };
      where = mm(body.seed_lps_mm) + " mm";
    } else {
      // The matrix is only the registration's affine part: up to a centimetre off here.
      body = { seed_lps_mm: lps, seed_frame: "baseline", registration: cfg.registration };
      where = mm(lps) + " mm of the baseline grid (carried to the follow-up through its deformable registration)";
    }
    state.busy = true;
    addingSet(false);
    mark("adding");
    say("Segmenting the lesion at " + where + " and looking for it in every study…");
    var answer = await send("POST", cfg.add_url, JSON.stringify(body), "application/json");
    state.busy = false;
    if (!answer.ok) {
      mark("error");
      say("Not added: " + detail(answer.data));
      return;
    }
    var found = answer.data.measurements.filter(function (m) { return m.status !== "not_found" && m.status !== "not_searched"; });
    mark("added");
    say("Added " + answer.data.label + " at " + mm(answer.data.seed_lps_mm) + " mm of the clicked study: found at " + found.length + " of " + answer.data.measurements.length + " studies; responses and risk recomputed. Reloading…");
    window.location.reload();
  }

  // ------------------------------------------------------------------ edit a mask
  function toolSet(tool) {
    var e = state.editing;
    if (!e) return;
    e.pane.nv.setPenValue(tool === "eraser" ? 0 : 1, false);
    document.querySelectorAll("[data-mask-tool]").forEach(function (b) {
      b.setAttribute("aria-pressed", b.dataset.maskTool === tool ? "true" : "false");
    });
  }

  async function editStart(button) {
    var side = button.dataset.side;
    var pane = paneOf(side) || viewer.panes[0];
    var cfg = ctx.sides[sideOf(pane)];
    if (!pane || !cfg || state.busy) return;
    state.busy = true;
    say("Loading the mask on the study's own grid…");
    // Editing happens on the study's own grid: a follow-up shown on the baseline grid is
    // reloaded on its own (own_grid is false for it, whether its matrix is exact or not,
    // identity or not), and the panes stop scrolling together (their grids differ).
    viewer.panes.forEach(function (p) { p.nv.broadcastTo([]); });
    if (!cfg.own_grid) {
      await pane.nv.loadVolumes([{ url: cfg.own_volume, name: side + "-own.nii.gz", colormap: "gray" }]);
      pane.slots = { mask: -1, probability: -1 };
    } else if (pane.slots.mask >= 0) {
      pane.nv.setOpacity(pane.slots.mask, 0);  // the drawing shows the lesion instead
    }
    var id = button.dataset.editMask;
    var loaded = await pane.nv.loadDrawingFromUrl(ctx.drawing.replace("{id}", id));
    state.busy = false;
    if (!loaded) { mark("error"); say("The mask could not be loaded for editing."); return; }
    pane.nv.setDrawingEnabled(true);
    pane.nv.opts.penSize = Number(document.getElementById("brush-size").value);
    state.editing = { id: id, pane: pane, label: button.closest("tr").querySelector("th").textContent.trim().split("\n")[0] };
    toolSet("brush");
    var centre = (button.dataset.centre || "").split(",").map(Number);
    if (centre.length === 3 && centre.every(isFinite)) {
      pane.nv.scene.crosshairPos = pane.nv.mm2frac([-centre[0], -centre[1], centre[2]]);
      pane.nv.drawScene();
    }
    tools.hidden = false;
    pane.canvas.scrollIntoView({ block: "center" });
    document.getElementById("mask-editing").textContent = "Editing " + state.editing.label + ":";
    mark("editing");
    say("Editing the mask: paint with the brush, erase with the eraser, then save.");
  }

  function morph(grow) {
    var e = state.editing;
    if (!e || !e.pane.nv.drawBitmap) return;
    var nv = e.pane.nv, bitmap = nv.drawBitmap, dims = nv.back.dims;
    var nx = dims[1], ny = dims[2], nz = dims[3], out = bitmap.slice();
    var lo = [nx, ny, nz], hi = [-1, -1, -1], x, y, z, i;
    for (i = 0; i < bitmap.length; i++) {
      if (!bitmap[i]) continue;
      x = i % nx; y = Math.floor(i / nx) % ny; z = Math.floor(i / (nx * ny));
      lo = [Math.min(lo[0], x), Math.min(lo[1], y), Math.min(lo[2], z)];
      hi = [Math.max(hi[0], x), Math.max(hi[1], y), Math.max(hi[2], z)];
    }
    if (hi[0] < 0) return;
    var steps = [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]];
    for (z = Math.max(lo[2] - 1, 0); z <= Math.min(hi[2] + 1, nz - 1); z++) {
      for (y = Math.max(lo[1] - 1, 0); y <= Math.min(hi[1] + 1, ny - 1); y++) {
        for (x = Math.max(lo[0] - 1, 0); x <= Math.min(hi[0] + 1, nx - 1); x++) {
          i = x + nx * (y + ny * z);
          var any = false, all = true;
          for (var s = 0; s < 6; s++) {
            var a = x + steps[s][0], b = y + steps[s][1], c = z + steps[s][2];
            var v = a >= 0 && b >= 0 && c >= 0 && a < nx && b < ny && c < nz ? bitmap[a + nx * (b + ny * c)] : 0;
            if (v) any = true; else all = false;
          }
          if (grow && !bitmap[i] && any) out[i] = 1;
          if (!grow && bitmap[i] && !all) out[i] = 0;
        }
      }
    }
    bitmap.set(out);
    nv.drawAddUndoBitmap();
    nv.refreshDrawing(true);
    say(grow ? "Mask grown by one voxel." : "Mask shrunk by one voxel.");
  }

  async function editSave() {
    var e = state.editing;
    if (!e || state.busy) return;
    state.busy = true;
    mark("saving");
    say("Saving the mask, re-measuring the lesion and recomputing the responses…");
    var bytes = await e.pane.nv.volumes[0].saveToDisk("", e.pane.nv.drawBitmap);
    var answer = await send("PUT", ctx.mask_api.replace("{id}", e.id), bytes, "application/octet-stream");
    state.busy = false;
    if (!answer.ok) { mark("error"); say("Not saved: " + detail(answer.data)); return; }
    mark("saved");
    say("Mask saved: " + answer.data.lesion_label + " now " + Number(answer.data.volume_ml).toFixed(2) + " ml, " + Number(answer.data.longest_diameter_mm).toFixed(1) + " mm. Reloading…");
    window.location.reload();
  }

  // ------------------------------------------------------------------ wiring
  if (addButton) addButton.addEventListener("click", function () { addingSet(!state.adding); });
  ["viewer-baseline", "viewer-follow-up"].forEach(function (id) {
    var canvas = document.getElementById(id);
    if (!canvas) return;
    // The panes start after this script runs: each is found when it is clicked.
    canvas.addEventListener("mouseup", function (event) {
      if (!state.adding || event.button !== 0) return;
      var pane = viewer.panes.filter(function (p) { return p.canvas === canvas; })[0];
      // NiiVue moves the crosshair to the clicked point on this same click.
      if (pane) window.setTimeout(function () { addAt(pane); }, 30);
    });
  });
  document.querySelectorAll("[data-edit-mask]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () { editStart(button); });
  });
  document.querySelectorAll("[data-mask-tool]").forEach(function (b) {
    b.addEventListener("click", function () { toolSet(b.dataset.maskTool); });
  });
  document.querySelectorAll("[data-mask-step]").forEach(function (b) {
    b.addEventListener("click", function () { morph(b.dataset.maskStep === "grow"); });
  });
  document.getElementById("brush-size").addEventListener("change", function (event) {
    if (state.editing) state.editing.pane.nv.opts.penSize = Number(event.target.value);
  });
  document.getElementById("mask-undo").addEventListener("click", function () {
    if (state.editing) state.editing.pane.nv.drawUndo();
  });
  document.getElementById("mask-save").addEventListener("click", editSave);
  document.getElementById("mask-cancel").addEventListener("click", function () { window.location.reload(); });
  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target && /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName)) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "a" && addButton) addingSet(!state.adding);
    else if (state.editing && event.key === "b") toolSet("brush");
    else if (state.editing && event.key === "e") toolSet("eraser");
    else if (state.editing && event.key === "+") morph(true);
    else if (state.editing && event.key === "-") morph(false);
  });
  window.radtrackCorrection = { state: state, addAt: addAt, editStart: editStart, morph: morph, save: editSave };
})();
