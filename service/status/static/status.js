// flipwatch status page: draws one SVG chart per stream from GET /v1/status.
// Hand-written, no dependencies, nothing downloaded at run time. Each estimate is a
// <circle class="point" data-window=.. data-value=..>; baselines are dashed paths; alert state
// changes are <g class="alert-marker firing|resolved" data-window=.. data-rule=..>.
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var WIDTH = 640;
  var HEIGHT = 220;
  var MARGIN = { top: 14, right: 14, bottom: 30, left: 46 };
  var BASELINES = {
    ac: { label: "AC", color: "#a0702a" },
    doc: { label: "DoC", color: "#7048c2" },
    atc: { label: "ATC", color: "#2a78b8" },
    atc_ne: { label: "ATC-NE", color: "#1a9aa6" },
    cot: { label: "COT", color: "#7a7a7a" },
  };

  function svg(name, attrs, parent) {
    var node = document.createElementNS(SVG_NS, name);
    Object.keys(attrs || {}).forEach(function (key) {
      node.setAttribute(key, String(attrs[key]));
    });
    if (parent) parent.appendChild(node);
    return node;
  }

  function html(name, attrs, parent, text) {
    var node = document.createElement(name);
    Object.keys(attrs || {}).forEach(function (key) {
      node.setAttribute(key, String(attrs[key]));
    });
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function isNumber(value) {
    return typeof value === "number" && isFinite(value);
  }

  function percent(value) {
    return (value * 100).toFixed(1) + "%";
  }

  // The y range: every plotted value and accuracy floor, padded, on 5-point steps, within [0, 1].
  function yDomain(stream) {
    var values = [];
    stream.series.forEach(function (p) {
      values.push(p.estimated_accuracy);
      Object.keys(p.baselines || {}).forEach(function (m) {
        if (isNumber(p.baselines[m])) values.push(p.baselines[m]);
      });
    });
    stream.rules.forEach(function (r) {
      if (r.kind === "accuracy_below") values.push(r.threshold);
    });
    var lo = Math.min.apply(null, values);
    var hi = Math.max.apply(null, values);
    lo = Math.max(0, Math.floor((lo - 0.02) * 20) / 20);
    hi = Math.min(1, Math.ceil((hi + 0.02) * 20) / 20);
    if (hi - lo < 0.1) {
      lo = Math.max(0, hi - 0.1);
      hi = Math.min(1, lo + 0.1);
    }
    return [lo, hi];
  }

  function drawChart(figure, stream) {
    while (figure.firstChild) figure.removeChild(figure.firstChild);
    var series = stream.series;
    if (!series.length) {
      html("figcaption", { class: "empty" }, figure, "No estimates yet.");
      return;
    }
    var first = series[0].window_index;
    var last = series[series.length - 1].window_index;
    if (first === last) {
      first -= 1;
      last += 1;
    }
    var domain = yDomain(stream);
    var plotW = WIDTH - MARGIN.left - MARGIN.right;
    var plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
    var x = function (w) {
      return MARGIN.left + ((w - first) / (last - first)) * plotW;
    };
    var y = function (v) {
      return MARGIN.top + (1 - (v - domain[0]) / (domain[1] - domain[0])) * plotH;
    };

    var root = svg("svg", {
      viewBox: "0 0 " + WIDTH + " " + HEIGHT,
      class: "chart-svg",
      role: "img",
      "aria-label": "Estimated accuracy of " + stream.name + " over " + series.length + " windows",
      "data-stream": stream.name,
    });

    // Grid and axes.
    var grid = svg("g", { class: "grid" }, root);
    var range = domain[1] - domain[0];
    var step = range <= 0.2 ? 0.05 : range <= 0.5 ? 0.1 : 0.2;
    for (var v = Math.ceil(domain[0] / step - 1e-9) * step; v <= domain[1] + 1e-9; v += step) {
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(v), y2: y(v) }, grid);
      svg("text", { x: MARGIN.left - 6, y: y(v) + 4, class: "tick y" }, grid).textContent =
        Math.round(v * 100) + "%";
    }
    var xticks = Math.min(6, last - first);
    for (var i = 0; i <= xticks; i++) {
      var w = Math.round(first + ((last - first) * i) / xticks);
      svg("text", { x: x(w), y: HEIGHT - 10, class: "tick x" }, grid).textContent = String(w);
    }
    svg("text", { x: WIDTH - MARGIN.right, y: HEIGHT - 1, class: "axis-label" }, grid)
      .textContent = "window";

    // Accuracy floors of the stream's rules.
    stream.rules.forEach(function (rule) {
      if (rule.kind !== "accuracy_below") return;
      var line = svg("line", {
        class: "threshold",
        x1: MARGIN.left,
        x2: WIDTH - MARGIN.right,
        y1: y(rule.threshold),
        y2: y(rule.threshold),
        "data-rule": rule.name,
      }, root);
      svg("title", {}, line).textContent = rule.name + ": floor " + percent(rule.threshold);
    });

    // Baselines: one dashed path per method, broken where a window has no value.
    var legend = [];
    Object.keys(BASELINES).forEach(function (method) {
      var d = "";
      var pen = "M";
      series.forEach(function (p) {
        var value = (p.baselines || {})[method];
        if (isNumber(value)) {
          d += pen + x(p.window_index).toFixed(1) + "," + y(value).toFixed(1) + " ";
          pen = "L";
        } else {
          pen = "M";
        }
      });
      if (!d) return;
      svg("path", {
        d: d.trim(),
        class: "baseline",
        "data-method": method,
        stroke: BASELINES[method].color,
      }, root);
      legend.push({ label: BASELINES[method].label, color: BASELINES[method].color, dashed: true });
    });

    // The estimate: a line and one dot per window.
    svg("path", {
      class: "accuracy-line",
      d: series
        .map(function (p, k) {
          return (k ? "L" : "M") + x(p.window_index).toFixed(1) + "," + y(p.estimated_accuracy).toFixed(1);
        })
        .join(" "),
    }, root);
    var points = svg("g", { class: "points" }, root);
    series.forEach(function (p) {
      var dot = svg("circle", {
        class: "point",
        cx: x(p.window_index).toFixed(1),
        cy: y(p.estimated_accuracy).toFixed(1),
        r: series.length > 60 ? 2.5 : 3.5,
        "data-window": p.window_index,
        "data-value": p.estimated_accuracy,
      }, points);
      svg("title", {}, dot).textContent =
        "window " + p.window_index + ": " + percent(p.estimated_accuracy) + " (" + p.signal + ")";
    });
    legend.unshift({ label: "estimated accuracy", color: "#111", dashed: false });

    // Alert markers: a vertical line and a triangle on top, at the window that changed the state.
    var markers = svg("g", { class: "alert-markers" }, root);
    stream.alerts.forEach(function (event) {
      if (event.window_index < series[0].window_index) return;
      var mx = x(event.window_index);
      var g = svg("g", {
        class: "alert-marker " + event.state,
        "data-window": event.window_index,
        "data-rule": event.rule_name,
        "data-state": event.state,
      }, markers);
      svg("line", { x1: mx, x2: mx, y1: MARGIN.top, y2: HEIGHT - MARGIN.bottom }, g);
      svg("path", {
        d: "M" + (mx - 5) + "," + (MARGIN.top - 8) + " L" + (mx + 5) + "," + (MARGIN.top - 8) +
          " L" + mx + "," + MARGIN.top + " Z",
      }, g);
      svg("title", {}, g).textContent =
        event.rule_name + " " + event.state + " at window " + event.window_index;
    });

    figure.appendChild(root);
    var caption = html("figcaption", { class: "chart-legend" }, figure);
    legend.forEach(function (item) {
      var entry = html("span", { class: "legend-item" }, caption);
      var swatch = html("span", { class: "swatch" + (item.dashed ? " dashed" : "") }, entry);
      swatch.style.borderColor = item.color;
      entry.appendChild(document.createTextNode(item.label));
    });
  }

  function showError(error) {
    var node = document.getElementById("status-error");
    if (!node) return;
    node.hidden = false;
    node.textContent = "Could not load the chart data: " + error.message;
  }

  function load() {
    return fetch("/v1/status", {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then(function (response) {
        if (!response.ok) throw new Error("GET /v1/status answered " + response.status);
        return response.json();
      })
      .then(function (data) {
        data.streams.forEach(function (stream) {
          var figure = document.querySelector('figure.chart[data-stream-id="' + stream.id + '"]');
          if (figure) drawChart(figure, stream);
        });
        document.documentElement.setAttribute("data-rendered", "true");
      });
  }

  function start() {
    load().catch(showError);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
