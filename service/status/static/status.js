// flipwatch status page: draws one SVG chart per stream from GET /v1/status.
// Hand-written, no dependencies, nothing downloaded at run time. The x axis is time (each
// window's estimate time). Each estimate is a <circle class="point" data-window=.. data-value=..>;
// baselines are paths with a dash pattern and point shape of their own, so equal values (AC on
// DoC) stay visible; realized accuracy from labels is <rect class="realized">; alert state changes
// are <g class="alert-marker firing|resolved" data-window=.. data-rule=..> with a text label in
// a lane above the plot, a new lane whenever labels would overlap.
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var WIDTH = 640;
  var HEIGHT = 250;
  var LANE = 13; // height of one alert-label lane above the plot
  var MARGIN = { top: 14, right: 14, bottom: 34, left: 46 };
  // Each baseline: its colour, dash pattern and the shape of its points (c circle, s square,
  // d diamond, t triangle, x cross), so two baselines with the same values are both visible.
  var BASELINES = {
    ac: { label: "AC", color: "#c06a00", dash: "8 4", shape: "s" },
    doc: { label: "DoC", color: "#7048c2", dash: "2 3", shape: "d" },
    atc: { label: "ATC", color: "#2a78b8", dash: "12 3 2 3", shape: "t" },
    atc_ne: { label: "ATC-NE", color: "#1a9aa6", dash: "4 2", shape: "x" },
    cot: { label: "COT", color: "#7a7a7a", dash: "1 2", shape: "c" },
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

  function pad(n) {
    return (n < 10 ? "0" : "") + n;
  }

  // A time tick: HH:MM within one day, else MM-DD HH:MM (UTC, like the rest of the page).
  function timeLabel(ms, span) {
    var d = new Date(ms);
    var hm = pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
    if (span < 60 * 1000 * 3) hm += ":" + pad(d.getUTCSeconds());
    if (span < 24 * 3600 * 1000) return hm;
    return pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " + hm;
  }

  function shape(kind, cx, cy, size, attrs, parent) {
    var r = size;
    var d;
    if (kind === "s") d = "M" + (cx - r) + "," + (cy - r) + "h" + 2 * r + "v" + 2 * r + "h" + -2 * r + "Z";
    else if (kind === "d") d = "M" + cx + "," + (cy - r) + "L" + (cx + r) + "," + cy + "L" + cx + "," + (cy + r) + "L" + (cx - r) + "," + cy + "Z";
    else if (kind === "t") d = "M" + cx + "," + (cy - r) + "L" + (cx + r) + "," + (cy + r) + "L" + (cx - r) + "," + (cy + r) + "Z";
    else if (kind === "x") d = "M" + (cx - r) + "," + (cy - r) + "L" + (cx + r) + "," + (cy + r) + "M" + (cx + r) + "," + (cy - r) + "L" + (cx - r) + "," + (cy + r);
    else d = "M" + (cx - r) + "," + cy + "a" + r + "," + r + " 0 1,0 " + 2 * r + ",0a" + r + "," + r + " 0 1,0 " + -2 * r + ",0";
    attrs.d = d;
    return svg("path", attrs, parent);
  }

  // The y range: every plotted value and accuracy floor, padded, on 5-point steps, within [0, 1].
  function yDomain(stream) {
    var values = [];
    stream.series.forEach(function (p) {
      values.push(p.estimated_accuracy);
      if (isNumber(p.lower)) values.push(p.lower);
      if (isNumber(p.upper)) values.push(p.upper);
      Object.keys(p.baselines || {}).forEach(function (m) {
        if (isNumber(p.baselines[m])) values.push(p.baselines[m]);
      });
      if (isNumber(p.realized_accuracy)) values.push(p.realized_accuracy);
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
    var time = function (p) {
      return Date.parse(p.created_at);
    };
    var first = time(series[0]);
    var last = time(series[series.length - 1]);
    if (!(last > first)) {
      first -= 30 * 1000;
      last += 30 * 1000;
    }
    var span = last - first;

    // Alert labels above the plot: each in the first lane where it does not overlap the label
    // before it in that lane (about 6 px per character).
    var visibleAlerts = stream.alerts.filter(function (e) {
      return e.window_index >= series[0].window_index;
    });
    var byWindow = {};
    series.forEach(function (p) {
      byWindow[p.window_index] = p;
    });
    var plotW = WIDTH - MARGIN.left - MARGIN.right;
    var xOfTime = function (ms) {
      return MARGIN.left + ((ms - first) / span) * plotW;
    };
    var alertTime = function (e) {
      var p = byWindow[e.window_index];
      return p ? time(p) : Date.parse(e.created_at);
    };
    var laneEnds = [];
    var placed = visibleAlerts.map(function (e) {
      var text = e.rule_name + (e.state === "firing" ? " fired" : " resolved");
      var mx = xOfTime(alertTime(e));
      var width = text.length * 6 + 14;
      var left = Math.min(Math.max(mx - 5, MARGIN.left), WIDTH - MARGIN.right - width);
      var lane = 0;
      while (laneEnds[lane] !== undefined && laneEnds[lane] > left) lane++;
      laneEnds[lane] = left + width;
      return { event: e, text: text, x: mx, left: left, lane: lane };
    });
    var top = MARGIN.top + laneEnds.length * LANE;
    var height = HEIGHT + laneEnds.length * LANE;

    var domain = yDomain(stream);
    var plotH = height - top - MARGIN.bottom;
    var x = function (p) {
      return xOfTime(time(p));
    };
    var y = function (v) {
      return top + (1 - (v - domain[0]) / (domain[1] - domain[0])) * plotH;
    };

    var root = svg("svg", {
      viewBox: "0 0 " + WIDTH + " " + height,
      class: "chart-svg",
      role: "img",
      "aria-label": "Estimated accuracy of " + stream.name + " over " + series.length + " windows",
      "data-stream": stream.name,
    });

    // Grid and axes: accuracy on y, the estimates' time (UTC) on x.
    var grid = svg("g", { class: "grid" }, root);
    var range = domain[1] - domain[0];
    var step = range <= 0.2 ? 0.05 : range <= 0.5 ? 0.1 : 0.2;
    for (var v = Math.ceil(domain[0] / step - 1e-9) * step; v <= domain[1] + 1e-9; v += step) {
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(v), y2: y(v) }, grid);
      svg("text", { x: MARGIN.left - 6, y: y(v) + 4, class: "tick y" }, grid).textContent =
        Math.round(v * 100) + "%";
    }
    var xticks = 5;
    for (var i = 0; i <= xticks; i++) {
      var ms = first + (span * i) / xticks;
      svg("text", {
        x: xOfTime(ms),
        y: height - 16,
        class: "tick x" + (i === 0 ? " first" : i === xticks ? " last" : ""),
        "data-time": new Date(ms).toISOString(),
      }, grid).textContent = timeLabel(ms, span);
    }
    svg("text", { x: WIDTH - MARGIN.right, y: height - 2, class: "axis-label" }, grid)
      .textContent = "time of estimate (UTC)";

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
      var style = BASELINES[method];
      var marks = svg("g", { class: "baseline-points", "data-method": method, fill: style.color, stroke: style.color }, null);
      series.forEach(function (p) {
        var value = (p.baselines || {})[method];
        if (isNumber(value)) {
          d += pen + x(p).toFixed(1) + "," + y(value).toFixed(1) + " ";
          pen = "L";
          if (series.length <= 60) shape(style.shape, x(p), y(value), 2.5, { class: "mark" }, marks);
        } else {
          pen = "M";
        }
      });
      if (!d) return;
      svg("path", {
        d: d.trim(),
        class: "baseline",
        "data-method": method,
        stroke: style.color,
        "stroke-dasharray": style.dash,
      }, root);
      root.appendChild(marks);
      legend.push({ label: style.label, color: style.color, dash: style.dash });
    });

    // The 90 % prediction interval: a band between lower and upper, where windows have one.
    var banded = series.filter(function (p) { return isNumber(p.lower) && isNumber(p.upper); });
    if (banded.length) {
      // x takes the point (its time); `top` above is the plot's top edge, not a path.
      var upperEdge = banded.map(function (p, k) {
        return (k ? "L" : "M") + x(p).toFixed(1) + "," + y(p.upper).toFixed(1);
      });
      var lowerEdge = banded.slice().reverse().map(function (p) {
        return "L" + x(p).toFixed(1) + "," + y(p.lower).toFixed(1);
      });
      svg("path", { class: "interval-band", d: upperEdge.concat(lowerEdge).join(" ") + " Z" }, root);
      legend.push({ label: "90% interval", color: "rgba(37, 99, 235, 0.18)", dashed: false });
    }

    // The estimate: a line and one dot per window.
    svg("path", {
      class: "accuracy-line",
      d: series
        .map(function (p, k) {
          return (k ? "L" : "M") + x(p).toFixed(1) + "," + y(p.estimated_accuracy).toFixed(1);
        })
        .join(" "),
    }, root);
    var points = svg("g", { class: "points" }, root);
    series.forEach(function (p) {
      var dot = svg("circle", {
        class: "point",
        cx: x(p).toFixed(1),
        cy: y(p.estimated_accuracy).toFixed(1),
        r: series.length > 60 ? 2.5 : 3.5,
        "data-window": p.window_index,
        "data-value": p.estimated_accuracy,
      }, points);
      svg("title", {}, dot).textContent =
        "window " + p.window_index + " at " + p.created_at + ": " + percent(p.estimated_accuracy) +
        (isNumber(p.lower) ? " [" + percent(p.lower) + ", " + percent(p.upper) + "]" : "") +
        " (" + p.signal + ")" +
        (isNumber(p.label_shift) ? ", class-mix shift " + p.label_shift.toFixed(2) : "");
    });
    legend.unshift({ label: "estimated accuracy", color: "#111", dash: "" });

    // Realized accuracy (labels posted later): a hollow green square per labeled window.
    var realized = series.filter(function (p) {
      return isNumber(p.realized_accuracy);
    });
    realized.forEach(function (p) {
      var mark = svg("rect", {
        class: "realized",
        x: (x(p) - 4).toFixed(1),
        y: (y(p.realized_accuracy) - 4).toFixed(1),
        width: 8,
        height: 8,
        "data-window": p.window_index,
        "data-value": p.realized_accuracy,
      }, points);
      svg("title", {}, mark).textContent =
        "window " + p.window_index + ": realized " + percent(p.realized_accuracy) + " on labels";
    });
    if (realized.length) legend.push({ label: "realized (labels)", color: "#1e7f3c", dash: "", box: true });

    // Alert markers: a vertical line through the plot (never over the axis labels) and the rule's
    // name with what happened, in its lane above the plot.
    var markers = svg("g", { class: "alert-markers" }, root);
    placed.forEach(function (m) {
      var event = m.event;
      var g = svg("g", {
        class: "alert-marker " + event.state,
        "data-window": event.window_index,
        "data-rule": event.rule_name,
        "data-state": event.state,
        "data-lane": m.lane,
      }, markers);
      var labelY = MARGIN.top + m.lane * LANE;
      svg("line", { x1: m.x, x2: m.x, y1: labelY + 2, y2: height - MARGIN.bottom }, g);
      svg("path", {
        d: "M" + (m.x - 4) + "," + (labelY - 6) + " L" + (m.x + 4) + "," + (labelY - 6) +
          " L" + m.x + "," + (labelY + 1) + " Z",
      }, g);
      svg("text", { x: m.left + 8, y: labelY, class: "alert-label" }, g).textContent = m.text;
      svg("title", {}, g).textContent =
        event.rule_name + " " + event.state + " at window " + event.window_index;
    });

    figure.appendChild(root);
    var caption = html("figcaption", { class: "chart-legend" }, figure);
    legend.forEach(function (item) {
      var entry = html("span", { class: "legend-item" }, caption);
      var swatch = html("span", { class: "swatch" + (item.box ? " box" : "") }, entry);
      swatch.style.borderColor = item.color;
      if (item.dash) {
        // The line's own dash pattern, drawn as a tiny SVG so the legend matches the chart.
        var mini = svg("svg", { width: 22, height: 6, class: "swatch-line" }, null);
        svg("line", { x1: 0, x2: 22, y1: 3, y2: 3, stroke: item.color, "stroke-width": 2,
          "stroke-dasharray": item.dash }, mini);
        swatch.className = "swatch-svg";
        swatch.appendChild(mini);
      }
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
