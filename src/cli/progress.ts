/** One-line progress (done/total, rate, ETA) on a TTY stderr; silent otherwise or in --json mode. */
export class Progress {
  private readonly start = performance.now();
  private readonly enabled: boolean;
  private lastDraw = 0;

  constructor(
    private readonly label: string,
    private readonly unit: string,
    quiet = false,
  ) {
    this.enabled = !quiet && Boolean(process.stderr.isTTY);
  }

  update(done: number, total: number): void {
    if (!this.enabled) return;
    const now = performance.now();
    if (done < total && now - this.lastDraw < 200) return;
    this.lastDraw = now;
    const secs = (now - this.start) / 1000;
    const rate = done / Math.max(secs, 1e-9);
    const eta = rate > 0 ? (total - done) / rate : 0;
    const pct = total ? Math.floor((100 * done) / total) : 100;
    process.stderr.write(
      `\r${this.label} ${done}/${total} ${this.unit} (${pct}%) ${rate.toFixed(2)} ${this.unit}/s ETA ${formatSeconds(eta)}   `,
    );
    if (done >= total) process.stderr.write('\n');
  }
}

export function formatSeconds(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** One progress line per phase of a long step (e.g. FlatQuant's optimizer steps), made on first use. */
export function phaseProgress(quiet: boolean): (phase: string, done: number, total: number) => void {
  const bars = new Map<string, Progress>();
  return (phase, done, total) => {
    let bar = bars.get(phase);
    if (!bar) bars.set(phase, (bar = new Progress(phase, 'steps', quiet)));
    bar.update(done, total);
  };
}
