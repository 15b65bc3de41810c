/**
 * A sweep as one self-contained HTML page: a line chart (SVG, no scripts, no external files) of
 * perplexity per column for each row of the study, on a log scale so a blow-up (W4A4 RTN) and
 * differences of a few tenths stay readable together, the full-precision perplexity as a dashed line,
 * then the tables of the Markdown report.
 */
import { cellAt, formatPpl, klTable, pplTable, type SweepResult } from './sweep.ts';

export const CHART = { width: 720, height: 360, left: 70, right: 180, top: 20, bottom: 70 };
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#17becf'];

export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** The plotted points: finite perplexities of each row, with the column index they sit at. */
export function chartSeries(result: SweepResult): { label: string; points: [number, number][] }[] {
  return result.rows.map((row) => ({
    label: row.label,
    points: result.cols.flatMap((col, i): [number, number][] => {
      const ppl = cellAt(result, row, col)?.ppl;
      return typeof ppl === 'number' && Number.isFinite(ppl) && ppl > 0 ? [[i, ppl]] : [];
    }),
  }));
}

/** Log-scale y range covering every point and the full-precision line, with a little room at both ends. */
export function yRange(values: number[]): [number, number] {
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  if (!(lo > 0) || !Number.isFinite(hi)) return [1, 10];
  const pad = hi / lo < 1.05 ? 1.02 : 1.05;
  return [lo / pad, hi * pad];
}

/** Pixel position of column i of n and of perplexity v, for the y range [lo, hi]. */
export function project(i: number, n: number, v: number, [lo, hi]: [number, number]): [number, number] {
  const w = CHART.width - CHART.left - CHART.right;
  const h = CHART.height - CHART.top - CHART.bottom;
  const x = CHART.left + (n > 1 ? (i * w) / (n - 1) : w / 2);
  const y = CHART.top + ((Math.log(hi) - Math.log(v)) / (Math.log(hi) - Math.log(lo))) * h;
  return [x, y];
}

function round(v: number): string {
  return (Math.round(v * 10) / 10).toString();
}

/** y ticks: 1-2-5 steps of every decade in range (at most ~8), or the range's ends when it spans little. */
function yTicks([lo, hi]: [number, number]): number[] {
  const ticks: number[] = [];
  for (let d = Math.floor(Math.log10(lo)); d <= Math.ceil(Math.log10(hi)); d++)
    for (const m of [1, 2, 5]) {
      const t = m * 10 ** d;
      if (t >= lo && t <= hi) ticks.push(t);
    }
  if (ticks.length >= 2 && ticks.length <= 8) return ticks;
  return Array.from({ length: 5 }, (_, k) => lo * (hi / lo) ** (k / 4));
}

export function sweepChart(result: SweepResult): string {
  const series = chartSeries(result);
  const n = result.cols.length;
  const fp = result.fp.ppl;
  const all = series.flatMap((s) => s.points.map((p) => p[1]));
  if (typeof fp === 'number' && fp > 0) all.push(fp);
  const range = yRange(all);
  const parts: string[] = [];
  const { width, height, left, right, top, bottom } = CHART;
  const plotBottom = height - bottom;
  for (const t of yTicks(range)) {
    const [, y] = project(0, n, t, range);
    parts.push(
      `<line x1="${left}" x2="${width - right}" y1="${round(y)}" y2="${round(y)}" stroke="#ddd"/>`,
      `<text x="${left - 6}" y="${round(y + 4)}" text-anchor="end">${escapeHtml(formatPpl(t))}</text>`,
    );
  }
  result.cols.forEach((col, i) => {
    const [x] = project(i, n, range[0], range);
    parts.push(
      `<text x="${round(x)}" y="${plotBottom + 16}" text-anchor="end" transform="rotate(-30 ${round(x)} ${plotBottom + 16})">${escapeHtml(col.label)}</text>`,
    );
  });
  if (typeof fp === 'number' && fp > 0) {
    const [, y] = project(0, n, fp, range);
    parts.push(
      `<line class="fp" x1="${left}" x2="${width - right}" y1="${round(y)}" y2="${round(y)}" stroke="#555" stroke-dasharray="5 4"/>`,
    );
  }
  series.forEach((s, k) => {
    const color = COLORS[k % COLORS.length];
    const pts = s.points.map(([i, v]) => project(i, n, v, range).map(round).join(',')).join(' ');
    parts.push(
      `<polyline class="series" data-label="${escapeHtml(s.label)}" fill="none" stroke="${color}" stroke-width="2" points="${pts}"/>`,
    );
    for (const [i, v] of s.points) {
      const [x, y] = project(i, n, v, range);
      parts.push(
        `<circle cx="${round(x)}" cy="${round(y)}" r="3" fill="${color}"><title>${escapeHtml(`${s.label}, ${result.cols[i].label}: ${formatPpl(v)}`)}</title></circle>`,
      );
    }
    parts.push(
      `<text x="${width - right + 12}" y="${top + 14 + 18 * k}" fill="${color}">${escapeHtml(s.label)}</text>`,
    );
  });
  if (typeof fp === 'number')
    parts.push(
      `<text x="${width - right + 12}" y="${top + 14 + 18 * series.length}" fill="#555">full precision ${escapeHtml(formatPpl(fp))}</text>`,
    );
  parts.push(
    `<line x1="${left}" x2="${left}" y1="${top}" y2="${plotBottom}" stroke="#000"/>`,
    `<line x1="${left}" x2="${width - right}" y1="${plotBottom}" y2="${plotBottom}" stroke="#000"/>`,
    `<text x="14" y="${top + (plotBottom - top) / 2}" transform="rotate(-90 14 ${top + (plotBottom - top) / 2})" text-anchor="middle">perplexity (log scale)</text>`,
  );
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">\n${parts.join('\n')}\n</svg>`;
}

/** Markdown pipe table -> HTML table (the tables sweep.ts writes: no pipes inside cells). */
function htmlTable(md: string): string {
  const rows = md
    .trim()
    .split('\n')
    .filter((_, i) => i !== 1)
    .map((line) =>
      line
        .replace(/^\| | \|$/g, '')
        .split(' | ')
        .map((c) => escapeHtml(c)),
    );
  const [head, ...body] = rows;
  return `<table>\n<tr>${head.map((c) => `<th>${c}</th>`).join('')}</tr>\n${body.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join('')}</tr>`).join('\n')}\n</table>`;
}

export function sweepHtml(result: SweepResult): string {
  const e = result.eval;
  const kl = klTable(result);
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(`llmq sweep ${result.study}`)}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th:first-child,td:first-child{text-align:left}</style>
</head><body>
<h1>${escapeHtml(`llmq sweep ${result.study}: ${result.title}`)}</h1>
<p>${escapeHtml(`Model ${result.model} on ${result.device}. Perplexity of ${e.source}: ${e.windows} windows of ${e.seqlen} tokens.`)}</p>
${sweepChart(result)}
<h2>Perplexity</h2>
${htmlTable(pplTable(result))}
${kl ? `<h2>KL divergence from full precision</h2>\n${htmlTable(kl)}` : ''}
</body></html>
`;
}
