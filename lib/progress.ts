// Progress reports of long operations (API.md: `{ stage, step, totalSteps, fraction, elapsedMs, etaMs }`).

export interface Progress {
  stage: string;
  step: number;
  totalSteps: number;
  fraction: number;
  elapsedMs: number;
  etaMs: number;
}

export interface LongCallOptions {
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
}

export class ProgressClock {
  private readonly start = performance.now();
  constructor(private readonly stage: string, private readonly totalSteps: number,
              private readonly onProgress?: (p: Progress) => void) {}

  report(step: number): void {
    if (!this.onProgress) return;
    const elapsedMs = performance.now() - this.start;
    const fraction = this.totalSteps > 0 ? step / this.totalSteps : 1;
    const etaMs = fraction > 0 ? (elapsedMs / fraction) * (1 - fraction) : 0;
    this.onProgress({ stage: this.stage, step, totalSteps: this.totalSteps, fraction, elapsedMs, etaMs });
  }
}
