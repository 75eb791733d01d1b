// What `wan-native generate` shows while it works: a line per stage, a progress bar with steps,
// speed and ETA when stderr is a terminal (cli-progress), one plain line per step otherwise, and
// the time each stage took. Everything goes to stderr; stdout carries only the written paths.
import { SingleBar } from 'cli-progress';

import type { Progress } from './progress';

export type Stage = 'text' | 'clip' | 'encode' | 'load' | 'sampling' | 'decode' | 'write';
export const STAGES: readonly Stage[] = ['text', 'clip', 'encode', 'load', 'sampling', 'decode', 'write'];

/** Seconds as "0.42 s", "12.3 s", "3:07" or "1:02:03". */
export function formatSeconds(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '-';
  if (seconds < 10) return `${seconds.toFixed(2)} s`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return clock(seconds);
}

/** m:ss or h:mm:ss, for ETAs. */
export function clock(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '-:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const mm = h > 0 ? String(m).padStart(2, '0') : String(m);
  return `${h > 0 ? `${h}:` : ''}${mm}:${String(r).padStart(2, '0')}`;
}

/** it/s when a step takes under a second, s/it otherwise (as tqdm, which ComfyUI users know). */
export function rate(msPerStep: number): string {
  if (!(msPerStep > 0)) return '- it/s';
  return msPerStep < 1000 ? `${(1000 / msPerStep).toFixed(2)} it/s` : `${(msPerStep / 1000).toFixed(2)} s/it`;
}

export interface ViewOptions {
  /** Draw bars (stderr is a terminal) or print plain lines. */
  tty: boolean;
  /** Print nothing but errors. */
  quiet: boolean;
  write?: (text: string) => void;
}

export class StageView {
  readonly times = new Map<Stage, number>();
  readonly #tty: boolean;
  readonly #quiet: boolean;
  readonly #write: (text: string) => void;
  #stage: Stage | undefined;
  #started = 0;
  #bar: SingleBar | undefined;
  #lastPlainStep = 0;

  constructor(o: ViewOptions) {
    this.#tty = o.tty;
    this.#quiet = o.quiet;
    this.#write = o.write ?? ((text) => process.stderr.write(text));
  }

  /** A line of its own (the run's summary, notes). */
  note(text: string): void {
    if (!this.#quiet) this.#write(`${text}\n`);
  }

  begin(stage: Stage, what: string): void {
    this.#stage = stage;
    this.#started = performance.now();
    this.#lastPlainStep = 0;
    this.note(`${stage}: ${what}`);
  }

  /** A progress report of the current stage; sampling and decode draw a bar (or print lines). */
  progress(p: Progress, unit: string): void {
    if (this.#quiet || !this.#stage || p.totalSteps <= 0) return;
    const msPerStep = p.step > 0 ? p.elapsedMs / p.step : 0;
    if (this.#tty) {
      if (!this.#bar) {
        this.#bar = new SingleBar({
          format: `${this.#stage.padEnd(8)} {bar} {value}/{total} ${unit} | {speed} | ETA {etaText} | {elapsedText}`,
          stream: process.stderr, barsize: 30, hideCursor: true, clearOnComplete: false, fps: 10,
          barCompleteChar: '\u2588', barIncompleteChar: '\u2591',
        });
        this.#bar.start(p.totalSteps, 0, { speed: '-', etaText: '-:--', elapsedText: '0:00' });
      }
      this.#bar.update(p.step, { speed: rate(msPerStep), etaText: clock(p.etaMs / 1000), elapsedText: clock(p.elapsedMs / 1000) });
      return;
    }
    if (p.step === this.#lastPlainStep) return;
    this.#lastPlainStep = p.step;
    this.#write(`${this.#stage}: ${unit.replace(/s$/, '')} ${p.step}/${p.totalSteps}  ${rate(msPerStep)}  ETA ${clock(p.etaMs / 1000)}\n`);
  }

  /** Ends the current stage and records its time; `extra(seconds)` follows the time ("0.51 s/step"). */
  end(extra?: (seconds: number) => string): number {
    const stage = this.#stage;
    if (!stage) return 0;
    this.stopBar();
    const seconds = (performance.now() - this.#started) / 1000;
    this.times.set(stage, (this.times.get(stage) ?? 0) + seconds);
    this.#stage = undefined;
    this.note(`${stage}: done in ${formatSeconds(seconds)}${extra ? ` (${extra(seconds)})` : ''}`);
    return seconds;
  }

  /** Ends the current stage without recording its time (it was measured in parts, see record). */
  close(): void {
    this.stopBar();
    this.#stage = undefined;
  }

  /** Adds time measured elsewhere (decode and write interleave when frames are streamed). */
  record(stage: Stage, seconds: number): void {
    this.times.set(stage, (this.times.get(stage) ?? 0) + seconds);
  }

  /** Leaves the terminal tidy before a message (Ctrl-C, an error). */
  stopBar(): void {
    if (this.#bar) {
      this.#bar.stop();
      this.#bar = undefined;
    }
  }

  /** The time per stage, one line each, with `extra` per stage (s/step of sampling). */
  summary(extra: Partial<Record<Stage, string>>, totalSeconds: number): string {
    const rows = STAGES.filter((s) => this.times.has(s))
      .map((s) => `  ${s.padEnd(9)}${formatSeconds(this.times.get(s)!).padStart(9)}${extra[s] ? `  (${extra[s]})` : ''}`);
    rows.push(`  ${'total'.padEnd(9)}${formatSeconds(totalSeconds).padStart(9)}`);
    return `time per stage:\n${rows.join('\n')}`;
  }
}
