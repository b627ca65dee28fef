/**
 * report.html: one self-contained page (no network, opens from a file) with
 * the compare run's charts and the numbers behind them.
 *
 * The page carries the result as JSON and Chart.js inlined; its own script
 * (PAGE_SCRIPT) builds the five charts, and a table under each, from that
 * JSON. When done it sets `document.body.dataset.chartsReady` to the number
 * of charts and `window.__charts[id]` to the labels and data each chart was
 * given, so a browser test can check the page drew the run's own numbers.
 * The header and the forecast check, which have no chart, are written here.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { CompareResult } from './types.js';
import { checkGrid, winners } from './check-grid.js';

export function renderReport(result: CompareResult): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>splitnet compare · ${esc(result.config.arch)} · ${esc(result.date)}</title>
<style>${CSS}</style>
</head>
<body>
${header(result)}
<main>
${chartSection('chart-throughput', 'Throughput', 'Images per second, each mode on the same config. A skipped mode has no bar.')}
${chartSection('chart-breakdown', 'Step time by worker', 'Mean milliseconds of a timed step, split by what each worker was doing.')}
${chartSection('chart-loss', 'Loss', 'Training loss per step; the modes compute the same step, so the curves should coincide.')}
${chartSection('chart-bytes', 'Bytes sent per step', 'Per worker: what the layer shapes predicted before the run against what the workers measured, the mean of each mode drawn; the table has every worker against the prediction for its rank, exact to the byte (0.00 %) as expected.')}
${chartSection('chart-forecast', 'Forecast', `Predicted step time against workers at batch ${result.config.batch}, per link (line style) and mode (colour); the largest marker at each point is the best mode. ` +
  'Every point, hybrid and model at N workers (one worker per tower) included, comes from the step-time model that the forecast check below sets against measured runs of those layouts here.')}
${forecastCheckSection(result)}
</main>
<script type="application/json" id="compare-data">${jsonForHtml(pageData(result))}</script>
<script>${inlineScript(chartJs())}</script>
<script>${inlineScript(PAGE_SCRIPT)}</script>
</body>
</html>
`;
}

/**
 * The result as the page gets it: without the spans, which can run to
 * thousands per worker and are drawn by each mode's trace.json instead.
 */
function pageData(result: CompareResult): unknown {
  return {
    ...result,
    modes: result.modes.map((m) => ({ ...m, workers: m.workers.map(({ spans: _spans, ...w }) => w) })),
  };
}

/** JSON inside a script element: `<` escaped so no `</script>` or `<!--` in the data can end or change it. */
export function jsonForHtml(value: unknown): string {
  return JSON.stringify(value).replace(/</g, '\\u003c');
}

/**
 * Code inside a script element: `</script` would end the element early, so
 * it becomes `<\/script` (the same string, regex or comment to JavaScript).
 * `<!--` followed by `<script` changes how the HTML parser ends a script, and
 * has no such rewrite that is safe in every JavaScript context: refused.
 */
export function inlineScript(code: string): string {
  if (code.includes('<!--')) throw new Error('inlined script contains "<!--", expected none (it changes where the HTML parser ends a script)');
  return code.replace(/<\/script/gi, '<\\/script');
}

let chartJsCode: string | undefined;

/**
 * Chart.js's UMD build (it defines window.Chart), read from node_modules.
 * The package's exports map hides dist/, so the file is found beside the
 * entry point. The URLs in its licence banners lose their scheme (the notice
 * stays) and the source map comment goes: the page names no address at all.
 */
export function chartJs(): string {
  if (chartJsCode === undefined) {
    const entry = createRequire(import.meta.url).resolve('chart.js');
    const file = join(dirname(entry), 'chart.umd.js');
    let code: string;
    try {
      code = readFileSync(file, 'utf8');
    } catch (e) {
      throw new Error(`Chart.js UMD build: expected ${file} beside the package's entry ${entry}, could not read it (${(e as Error).message})`);
    }
    chartJsCode = code
      .replace(/\/\*![\s\S]*?\*\//g, (banner) => banner.replace(/https?:\/\//g, ''))
      .replace(/^\/\/# sourceMappingURL=.*$/m, '');
  }
  return chartJsCode;
}

function header(r: CompareResult): string {
  const c = r.config;
  const config: Array<[string, string]> = [
    ['arch', c.arch], ['width', String(c.width)], ['resolution', String(c.resolution)], ['batch', String(c.batch)],
    ['seed', String(c.seed)], ['steps', String(c.steps)], ['backend', c.backend], ['wire', c.wire ?? 'fp32'],
  ];
  // Older compare.json files have the loopback probe only.
  const probed = r.links ?? [{ name: 'loopback', ...r.link }];
  const link: Array<[string, string]> = probed.map((l) => [l.name,
    `${fmt(l.latencyMs, 3)} ms, ${fmtBytes(l.bandwidth)}/s (${fmt((l.bandwidth * 8) / 1e9, 2)} Gb/s)`]);
  return `<header>
<h1>splitnet compare</h1>
<p class="date">${esc(r.date)}</p>
<div class="facts">
${factList('Config', config)}
${factList('Measured links (latency, bandwidth)', link)}
</div>
${modeNotes(r)}
</header>`;
}

function factList(title: string, facts: Array<[string, string]>): string {
  const items = facts.map(([k, v]) => `<div><dt>${esc(k)}</dt><dd>${esc(v)}</dd></div>`).join('');
  return `<section class="fact-list"><h2>${esc(title)}</h2><dl>${items}</dl></section>`;
}

/** Why a mode did not run, or ran in one process: said once, above the charts. */
function modeNotes(r: CompareResult): string {
  const notes = r.modes.flatMap((m) => {
    if (m.skipped) return [`<li><b>${esc(m.mode)}</b> skipped: ${esc(m.skipped)}</li>`];
    if (m.fallback) return [`<li><b>${esc(m.mode)}</b> ran in one process: ${esc(m.fallback)}</li>`];
    return [];
  });
  return notes.length === 0 ? '' : `<ul class="notes">${notes.join('')}</ul>`;
}

function chartSection(id: string, title: string, caption: string): string {
  return `<section class="chart" id="${id}-section">
<h2>${esc(title)}</h2>
<p class="caption">${esc(caption)}</p>
<div class="canvas-box"><canvas id="${id}" role="img" aria-label="${esc(title)}"></canvas></div>
<details class="numbers"${id === 'chart-loss' ? '' : ' open'}><summary>numbers</summary><div class="table-box" id="${id}-table"></div></details>
</section>`;
}

function forecastCheckSection(r: CompareResult): string {
  const { links, rows } = checkGrid(r);
  const cells = (c: CompareResult['forecastCheck'][number] | undefined) => (c === undefined ? '<td>-</td><td>-</td><td>-</td>'
    : `<td>${fmt(c.predictedMs, 2)}</td><td>${fmt(c.measuredMs, 2)}</td><td>${fmtPercent(c.error)}</td>`);
  const body = rows.length === 0
    ? '<p class="caption">No configuration was measured against the forecast.</p>'
    : `<table id="forecast-check">
<thead><tr><th rowspan="2">mode</th><th rowspan="2">workers</th><th rowspan="2">oversubscribed</th>${links.map((l) => `<th colspan="3">${esc(l)}</th>`).join('')}</tr>
<tr>${links.map(() => '<th>predicted ms</th><th>measured ms</th><th>error</th>').join('')}</tr></thead>
<tbody>
${rows.map((row) => `<tr><td>${esc(row.mode)}</td><td>${row.workers}</td><td>${row.oversubscribed ? 'yes' : 'no'}</td>${links.map((l) => cells(row.byLink.get(l))).join('')}</tr>`).join('\n')}
</tbody>
</table>`;
  const picks = winners(r);
  const pickLine = picks.length === 0 ? '' : `<p class="caption" id="forecast-winners">Fastest as compared (every mode at its workers, the same global batch), predicted / measured: ${picks.map((p) =>
    `${esc(p.link)} ${esc(p.predicted)} / ${esc(p.measured)}${p.predicted === p.measured ? '' : ' <b>(missed)</b>'}`).join(', ')}</p>`;
  return `<section class="check">
<h2>Forecast check</h2>
<p class="caption">The forecast model against every configuration measured, on every link: step time predicted before the run and measured. Oversubscribed: more workers than cores or devices, so the measurement is not what the forecast describes. A shaped link emulates a rate only (tc tbf): its latency is the veth's.</p>
${body}
${pickLine}
</section>`;
}

function esc(s: string): string {
  return s.replace(/[&<>"']/g, (ch) => `&#${ch.charCodeAt(0)};`);
}

function fmt(x: number, digits: number): string {
  return Number.isFinite(x) ? x.toLocaleString('en-US', { maximumFractionDigits: digits }) : '–';
}

/** A relative error (0.12) as a signed percentage (+12.0 %). */
function fmtPercent(error: number): string {
  if (!Number.isFinite(error)) return '–';
  return `${error > 0 ? '+' : ''}${(error * 100).toFixed(1)} %`;
}

/** Decimal units, as link speeds are quoted. */
function fmtBytes(n: number): string {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (Math.abs(n) >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${fmt(n, i === 0 ? 0 : 2)} ${units[i]}`;
}

const CSS = `
:root { --fg: #1d2330; --muted: #5c6677; --line: #dde2ea; --bg: #fbfcfe; --card: #fff; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header, main { max-width: 1100px; margin: 0 auto; }
h1 { margin: 0; font-size: 22px; }
h2 { margin: 0 0 4px; font-size: 16px; }
.date, .caption { margin: 2px 0 10px; color: var(--muted); }
.facts { display: flex; flex-wrap: wrap; gap: 16px; margin: 12px 0; }
.fact-list { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; }
dl { display: flex; flex-wrap: wrap; gap: 4px 18px; margin: 0; }
dt { color: var(--muted); font-size: 12px; }
dd { margin: 0; font-variant-numeric: tabular-nums; }
.notes { margin: 0 0 12px; padding-left: 20px; color: #8a4b00; }
main { display: grid; grid-template-columns: 1fr; gap: 18px; }
section.chart, section.check { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 14px 16px; }
.canvas-box { position: relative; height: 320px; }
#chart-forecast-section .canvas-box { height: 420px; }
details.numbers { margin-top: 10px; }
summary { cursor: pointer; color: var(--muted); }
.table-box { max-height: 360px; overflow: auto; }
table { border-collapse: collapse; margin-top: 6px; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { font-weight: 600; color: var(--muted); }
td.best { font-weight: 700; }
`;

/**
 * The page's own script, plain ES2020 run by the browser: reads #compare-data,
 * builds each chart's labels and datasets, draws it with Chart.js and writes
 * the same numbers as a table under it. Text goes in through textContent only.
 */
const PAGE_SCRIPT = `
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('compare-data').textContent);
  var PARTS = ['compute', 'send', 'wait', 'optimizer'];
  var PART_COLORS = { compute: '#4e79a7', send: '#f28e2b', wait: '#e15759', optimizer: '#76b7b2' };
  var MODE_COLORS = { single: '#4e79a7', data: '#f28e2b', model: '#59a14f', hybrid: '#b07aa1', grid: '#9c755f' };
  // The loss curves coincide: single is a wide pale band drawn beneath, the
  // parallel modes dashed and dotted lines on top of it (a higher order draws first).
  var LOSS_STYLE = {
    single: { borderDash: [], borderWidth: 6, order: 2, alpha: '66' },
    data: { borderDash: [8, 4], borderWidth: 2, order: 1, alpha: '' },
    model: { borderDash: [2, 3], borderWidth: 2, order: 0, alpha: '' },
    hybrid: { borderDash: [12, 4, 2, 4], borderWidth: 2, order: 0, alpha: '' },
    grid: { borderDash: [4, 2], borderWidth: 2, order: 0, alpha: '' },
  };
  var LINK_DASH = [[], [8, 4], [2, 3], [12, 4, 2, 4]];
  var FORECAST_MODES = ['data', 'model', 'hybrid'];

  var ran = data.modes.filter(function (m) { return !m.skipped; });

  function modeLabel(m) {
    var mode = m.mode === 'grid' && m.replicas ? 'grid ' + m.replicas + '×' + m.towers : m.mode;
    var name = m.link && m.link !== 'loopback' ? mode + ' @ ' + m.link : mode;
    if (m.skipped) return name + ' (skipped)';
    if (m.fallback) return name + ' (1 process)';
    return name;
  }

  function sum(xs) {
    return xs.reduce(function (a, b) { return a + b; }, 0);
  }

  function mean(xs) {
    return xs.length === 0 ? 0 : sum(xs) / xs.length;
  }

  function num(x, digits) {
    if (x === null || x === undefined || !isFinite(x)) return '–';
    return x.toLocaleString('en-US', { maximumFractionDigits: digits === undefined ? 2 : digits });
  }

  // decimal units, as in the header
  function bytes(x) {
    if (x === null || x === undefined || !isFinite(x)) return '–';
    var units = ['B', 'kB', 'MB', 'GB', 'TB'];
    var i = 0;
    while (Math.abs(x) >= 1000 && i < units.length - 1) { x /= 1000; i++; }
    return num(x, i === 0 ? 0 : 2) + ' ' + units[i];
  }

  function unique(xs) {
    return xs.filter(function (x, i) { return xs.indexOf(x) === i; });
  }

  function axis(title, format) {
    var a = { title: { display: true, text: title } };
    if (format) a.ticks = { callback: function (v) { return format(v); } };
    return a;
  }

  // each builder returns { type, labels, datasets, scales, table: { head, rows } }
  function throughput() {
    return {
      type: 'bar',
      labels: data.modes.map(modeLabel),
      datasets: [{
        label: 'images/s',
        data: data.modes.map(function (m) { return m.skipped ? null : m.imagesPerSec; }),
        backgroundColor: data.modes.map(function (m) { return MODE_COLORS[m.mode]; }),
      }],
      scales: { y: axis('images / s') },
      legend: false,
      table: {
        head: ['mode', 'images/s', 'step ms', 'processes', 'test accuracy'],
        rows: data.modes.map(function (m) {
          return m.skipped
            ? [modeLabel(m), 'skipped: ' + m.skipped, '', '', '']
            : [modeLabel(m), num(m.imagesPerSec, 1), num(m.stepMs, 2), String(m.world), num(m.testAccuracy * 100, 2) + ' %'];
        }),
      },
    };
  }

  function breakdown() {
    var bars = [];
    ran.forEach(function (m) {
      m.workers.forEach(function (w) { bars.push({ label: modeLabel(m) + ' · worker ' + w.rank, worker: w }); });
    });
    return {
      type: 'bar',
      labels: bars.map(function (b) { return b.label; }),
      datasets: PARTS.map(function (part) {
        return { label: part, data: bars.map(function (b) { return b.worker.stepMs[part]; }), backgroundColor: PART_COLORS[part] };
      }),
      scales: { x: { stacked: true }, y: Object.assign(axis('ms per step'), { stacked: true }) },
      table: {
        head: ['worker'].concat(PARTS.map(function (p) { return p + ' ms'; }), ['total ms']),
        rows: bars.map(function (b) {
          var parts = PARTS.map(function (p) { return b.worker.stepMs[p]; });
          return [b.label].concat(parts.map(function (x) { return num(x, 2); }), [num(sum(parts), 2)]);
        }),
      },
    };
  }

  function loss() {
    var steps = Math.max.apply(null, [0].concat(ran.map(function (m) { return m.losses.length; })));
    var labels = [];
    for (var s = 1; s <= steps; s++) labels.push(s); // losses[0] is step 1
    return {
      type: 'line',
      labels: labels,
      datasets: ran.map(function (m) {
        var style = LOSS_STYLE[m.mode];
        return {
          label: modeLabel(m), data: m.losses, borderColor: MODE_COLORS[m.mode] + style.alpha, backgroundColor: MODE_COLORS[m.mode],
          borderDash: style.borderDash, borderWidth: style.borderWidth, order: style.order, pointRadius: 0,
        };
      }),
      scales: { x: axis('step'), y: axis('loss') },
      table: {
        head: ['step'].concat(ran.map(modeLabel)),
        rows: labels.map(function (step, i) {
          return [String(step)].concat(ran.map(function (m) { return num(m.losses[i], 5); }));
        }),
      },
    };
  }

  function bytesSent() {
    var predicted = ran.map(function (m) { return m.predicted.bytesSentPerStep; });
    var measured = ran.map(function (m) { return mean(m.workers.map(function (w) { return w.bytesSentPerStep; })); });
    return {
      type: 'bar',
      labels: ran.map(modeLabel),
      datasets: [
        { label: 'predicted', data: predicted, backgroundColor: '#bab0ac' },
        { label: 'measured (mean of workers)', data: measured, backgroundColor: '#4e79a7' },
      ],
      scales: { y: axis('bytes sent per step per worker', bytes) },
      table: {
        head: ['mode', 'worker', 'predicted bytes', 'measured bytes', 'difference', 'error'],
        rows: [].concat.apply([], ran.map(function (m) {
          return m.workers.map(function (w) {
            var p = w.predicted.bytesSentPerStep;
            var diff = w.bytesSentPerStep - p;
            var error = p > 0 ? (diff / p * 100).toFixed(2) + ' %' : (diff === 0 ? '0.00 %' : 'none predicted');
            return [modeLabel(m), String(w.rank), num(p, 1), num(w.bytesSentPerStep, 1), (diff > 0 ? '+' : '') + num(diff, 1), (diff > 0 ? '+' : '') + error];
          });
        })),
      },
    };
  }

  // forecast points at the run's batch, one line per (link, mode); the best mode gets a large marker
  function forecast() {
    var points = data.forecast.filter(function (p) { return p.batch === data.config.batch; });
    var links = unique(points.map(function (p) { return p.link; }));
    var workers = unique(points.map(function (p) { return p.workers; })).sort(function (a, b) { return a - b; });
    function at(link, w) {
      return points.find(function (p) { return p.link === link && p.workers === w; });
    }
    var datasets = [];
    links.forEach(function (link, li) {
      FORECAST_MODES.forEach(function (mode) {
        var isBest = workers.map(function (w) { var p = at(link, w); return !!p && p.best === mode; });
        datasets.push({
          label: mode + ' · ' + link,
          data: workers.map(function (w) { var p = at(link, w); return p ? p.stepMs[mode] : null; }),
          borderColor: MODE_COLORS[mode], backgroundColor: MODE_COLORS[mode], borderDash: LINK_DASH[li % LINK_DASH.length], borderWidth: 2,
          pointStyle: isBest.map(function (b) { return b ? 'rectRot' : 'circle'; }),
          pointRadius: isBest.map(function (b) { return b ? 7 : 2; }),
        });
      });
    });
    var rows = [];
    links.forEach(function (link) {
      workers.forEach(function (w) {
        var p = at(link, w);
        if (!p) return;
        rows.push({ cells: [link, String(w)].concat(FORECAST_MODES.map(function (m) { return num(p.stepMs[m], 2); }), [p.best]), best: 2 + FORECAST_MODES.indexOf(p.best) });
      });
    });
    return {
      type: 'line',
      labels: workers,
      datasets: datasets,
      scales: { x: axis('workers'), y: Object.assign(axis('predicted ms per step (log)'), { type: 'logarithmic' }) },
      table: { head: ['link', 'workers'].concat(FORECAST_MODES.map(function (m) { return m + ' ms'; }), ['best']), rows: rows },
    };
  }

  function el(tag, text, className) {
    var e = document.createElement(tag);
    if (text !== undefined) e.textContent = text;
    if (className) e.className = className;
    return e;
  }

  // rows are arrays of cells, or { cells, best } where best is the index of the cell to mark
  function renderTable(id, table) {
    var t = el('table');
    var tr = el('tr');
    table.head.forEach(function (h) { tr.appendChild(el('th', h)); });
    t.appendChild(el('thead')).appendChild(tr);
    var body = t.appendChild(el('tbody'));
    table.rows.forEach(function (row) {
      var cells = Array.isArray(row) ? row : row.cells;
      var r = body.appendChild(el('tr'));
      cells.forEach(function (c, i) { r.appendChild(el('td', c, !Array.isArray(row) && row.best === i ? 'best' : undefined)); });
    });
    document.getElementById(id + '-table').appendChild(t);
  }

  // A line chart's legend shows each line as drawn, dash and width, long enough
  // to see the dash (with point styles Chart.js would take the style of the
  // first point, which has no dash), in dataset order whatever the drawing order.
  var lineLegend = {
    usePointStyle: true,
    pointStyle: 'line',
    pointStyleWidth: 32,
    boxWidth: 32,
    sort: function (a, b) { return a.datasetIndex - b.datasetIndex; },
    generateLabels: function (chart) {
      return Chart.defaults.plugins.legend.labels.generateLabels(chart).map(function (item) {
        var d = chart.data.datasets[item.datasetIndex];
        item.lineDash = d.borderDash;
        item.lineWidth = d.borderWidth;
        item.strokeStyle = d.borderColor;
        return item;
      });
    },
  };

  function draw(id, spec) {
    new Chart(document.getElementById(id), {
      type: spec.type,
      data: { labels: spec.labels, datasets: spec.datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: 'index', intersect: false },
        scales: spec.scales,
        plugins: {
          legend: {
            display: spec.legend !== false,
            position: 'bottom',
            labels: spec.type === 'line' ? lineLegend : {},
          },
        },
      },
    });
    renderTable(id, spec.table);
  }

  var builders = {
    'chart-throughput': throughput,
    'chart-breakdown': breakdown,
    'chart-loss': loss,
    'chart-bytes': bytesSent,
    'chart-forecast': forecast,
  };
  var given = {};
  Object.keys(builders).forEach(function (id) {
    var spec = builders[id]();
    draw(id, spec);
    given[id] = {
      labels: spec.labels.slice(),
      datasets: spec.datasets.map(function (d) { return { label: d.label, data: d.data.slice() }; }),
    };
  });
  window.__charts = given;
  document.body.dataset.chartsReady = String(Object.keys(given).length);
})();
`;
