/* Draws every Plotly figure on the page: a <div data-figure="ID"> gets the figure in the
   JSON <script id="ID">. Plotly is served by RadTrack itself (vendor/plotly). */
(function () {
  "use strict";
  function draw(div) {
    var source = document.getElementById(div.dataset.figure);
    if (!source || !window.Plotly) { return; }
    var figure = JSON.parse(source.textContent);
    window.Plotly.newPlot(div, figure.data, figure.layout, {
      responsive: true,
      displaylogo: false,
      modeBarButtonsToRemove: ["sendDataToCloud", "lasso2d", "select2d"],
    }).then(function () { div.dataset.drawn = "true"; });
  }
  document.querySelectorAll("[data-figure]").forEach(draw);
})();
