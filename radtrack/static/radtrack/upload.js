/* Chunked upload for the upload page.
 *
 * Sends a few files per request (so thousands of files never make one huge request),
 * all into one ingest session, shows a progress bar by bytes, lists every file that was
 * not stored with the server's reason, and finally asks the server to close the session
 * and queue the received series for processing. Without JavaScript the form posts all
 * files at once. No outside network, no libraries.
 */
(function () {
  "use strict";

  var FILES_PER_CHUNK = 8;
  var BYTES_PER_CHUNK = 32 * 1024 * 1024;
  var RETRIES = 2;

  var form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) {
    return;
  }
  var chunkUrl = form.dataset.chunkUrl;
  var finishUrlTemplate = form.dataset.finishUrl;
  var sessionUrlTemplate = form.dataset.sessionUrl;
  var maxBytes = parseInt(form.dataset.maxBytes, 10) || Infinity;
  var csrfToken = form.querySelector("input[name=csrfmiddlewaretoken]").value;
  // A request is refused as a whole when it is over the limit, so chunks stay below it
  // (less room for the multipart framing); a file near the limit travels alone.
  var chunkByteLimit = Math.max(1, Math.min(BYTES_PER_CHUNK, maxBytes - 65536));

  var button = document.getElementById("upload-button");
  var progressSection = document.getElementById("upload-progress");
  var bar = document.getElementById("upload-bar");
  var statusText = document.getElementById("upload-status");
  var countsText = document.getElementById("upload-counts");
  var reportLink = document.getElementById("upload-report-link");
  var problemsSection = document.getElementById("upload-problems");
  var problemRows = document.getElementById("upload-problem-rows");

  var busy = false;

  function megabytes(n) {
    return (n / 1048576).toFixed(1) + " MB";
  }

  function urlFor(template, id) {
    return template.replace("/0/", "/" + id + "/");
  }

  function chosenFiles() {
    var files = [];
    form.querySelectorAll("input[type=file]").forEach(function (input) {
      for (var i = 0; i < input.files.length; i++) {
        files.push(input.files[i]);
      }
    });
    return files;
  }

  /* Group files into requests of at most FILES_PER_CHUNK files and BYTES_PER_CHUNK
   * bytes (or less under a small upload limit); a bigger file travels alone. Files over the server's limit are not sent. */
  function makeChunks(files, onTooLarge) {
    var chunks = [];
    var current = [];
    var currentBytes = 0;
    files.forEach(function (file) {
      if (file.size > maxBytes) {
        onTooLarge(file);
        return;
      }
      if (current.length && (current.length >= FILES_PER_CHUNK || currentBytes + file.size > chunkByteLimit)) {
        chunks.push(current);
        current = [];
        currentBytes = 0;
      }
      current.push(file);
      currentBytes += file.size;
    });
    if (current.length) {
      chunks.push(current);
    }
    return chunks;
  }

  function addProblem(name, result, reason) {
    problemsSection.hidden = false;
    var row = document.createElement("tr");
    var cells = [name, result, reason];
    cells.forEach(function (text, index) {
      var cell = document.createElement(index === 0 ? "th" : "td");
      if (index === 0) {
        cell.scope = "row";
        cell.className = "filename";
      }
      if (index === 1) {
        var badge = document.createElement("span");
        badge.className = "badge badge--" + result;
        badge.textContent = result;
        cell.appendChild(badge);
      } else {
        cell.textContent = text;
      }
      row.appendChild(cell);
    });
    problemRows.appendChild(row);
  }

  /* POST a FormData; resolve with {status, body} where body is parsed JSON or null. */
  function post(url, data, onProgress) {
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRFToken", csrfToken);
      xhr.setRequestHeader("Accept", "application/json");
      if (onProgress && xhr.upload) {
        xhr.upload.addEventListener("progress", function (event) {
          if (event.lengthComputable) {
            onProgress(event.loaded / event.total);
          }
        });
      }
      xhr.onload = function () {
        var body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (e) {
          body = null;
        }
        resolve({ status: xhr.status, body: body });
      };
      xhr.onerror = function () {
        resolve({ status: 0, body: null });
      };
      xhr.send(data);
    });
  }

  function wait(ms) {
    return new Promise(function (resolve) {
      setTimeout(resolve, ms);
    });
  }

  function setProgress(fraction) {
    var percent = Math.max(0, Math.min(100, Math.round(fraction * 100)));
    bar.value = percent;
    bar.textContent = percent + "%";
  }

  async function upload(files) {
    var totals = { files: 0, stored: 0, duplicates: 0, conflicts: 0, rejected: 0, warnings: 0 };
    var sessionId = null;
    var stopped = "";

    function showCounts() {
      countsText.textContent =
        totals.files + " checked: " + totals.stored + " stored, " + totals.duplicates +
        " already stored, " + totals.conflicts + " conflicts, " + totals.rejected +
        " rejected, " + totals.warnings + " warnings";
    }

    var chunks = makeChunks(files, function (file) {
      totals.files += 1;
      totals.rejected += 1;
      addProblem(file.name, "rejected", megabytes(file.size) + " is over the upload limit of " + megabytes(maxBytes));
    });
    var totalBytes = 0;
    chunks.forEach(function (chunk) {
      chunk.forEach(function (file) {
        totalBytes += file.size;
      });
    });
    var doneBytes = 0;
    var sentFiles = 0;

    for (var c = 0; c < chunks.length && !stopped; c++) {
      var chunk = chunks[c];
      var chunkBytes = chunk.reduce(function (sum, file) {
        return sum + file.size;
      }, 0);
      statusText.textContent = "Sending files " + (sentFiles + 1) + "–" + (sentFiles + chunk.length) + " of " + files.length + "…";
      var data = new FormData();
      if (sessionId !== null) {
        data.append("session", sessionId);
      }
      chunk.forEach(function (file) {
        data.append("file", file, file.name);
      });

      var response = null;
      for (var attempt = 0; attempt <= RETRIES; attempt++) {
        response = await post(chunkUrl, data, function (fraction) {
          setProgress(totalBytes ? (doneBytes + fraction * chunkBytes) / totalBytes : 1);
        });
        if (response.status !== 0 && response.status < 500) {
          break;
        }
        await wait(1000 * (attempt + 1));
      }

      if (response.status === 200 && response.body) {
        sessionId = response.body.session;
        ["files", "stored", "duplicates", "conflicts", "rejected", "warnings"].forEach(function (key) {
          totals[key] += response.body.counts[key];
        });
        response.body.files.forEach(function (outcome) {
          if (outcome.status === "rejected" || outcome.status === "conflict") {
            addProblem(outcome.name, outcome.status, outcome.reason);
          }
        });
      } else if (response.status === 401 || response.status === 403) {
        stopped = (response.body && response.body.detail) || "The server refused the upload.";
      } else {
        var reason = (response.body && response.body.detail) ||
          (response.status ? "the server answered " + response.status : "the connection failed");
        chunk.forEach(function (file) {
          totals.files += 1;
          totals.rejected += 1;
          addProblem(file.name, "rejected", "not sent: " + reason);
        });
      }
      doneBytes += chunkBytes;
      sentFiles += chunk.length;
      setProgress(totalBytes ? doneBytes / totalBytes : 1);
      showCounts();
    }

    if (sessionId !== null) {
      statusText.textContent = "Finishing: queueing the received series for processing…";
      var finish = await post(urlFor(finishUrlTemplate, sessionId), new FormData(), null);
      if (finish.status !== 200) {
        stopped = stopped || (finish.body && finish.body.detail) || "The import could not be closed.";
      }
      reportLink.hidden = false;
      reportLink.textContent = "";
      var link = document.createElement("a");
      link.href = urlFor(sessionUrlTemplate, sessionId);
      link.textContent = "Open the report of import " + sessionId;
      reportLink.appendChild(link);
    }
    setProgress(1);
    showCounts();
    statusText.textContent = stopped
      ? "Stopped: " + stopped
      : "Done: " + totals.stored + " of " + totals.files + " files stored.";
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (busy) {
      return;
    }
    var files = chosenFiles();
    progressSection.hidden = false;
    if (!files.length) {
      statusText.textContent = "Choose at least one file, folder or zip archive.";
      return;
    }
    busy = true;
    button.disabled = true;
    problemRows.textContent = "";
    problemsSection.hidden = true;
    reportLink.hidden = true;
    setProgress(0);
    upload(files).finally(function () {
      busy = false;
      button.disabled = false;
    });
  });

  window.addEventListener("beforeunload", function (event) {
    if (busy) {
      event.preventDefault();
      event.returnValue = "";
    }
  });
})();
