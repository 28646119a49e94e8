// One log line per burst instead of one per event: what a flood of identical failures (refused
// connections, a full temp dir) would otherwise turn into — a log as fast as the flood, itself
// filling the disk. The first event after a quiet period is logged at once, with its details;
// the ones that follow within the window are only counted, and a summary line at the end of the
// window gives their number and their kinds. At most one line per window, whatever the rate.

/** Between two lines of one burst log (nginx logs "worker_connections are not enough" at every refusal). */
export const BURST_WINDOW_MS = 10_000;

export type BurstWriter = (fields: Record<string, unknown>, msg: string) => void;

export class BurstLog {
  #write: BurstWriter;
  #windowMs: number;
  #timer: NodeJS.Timeout | null = null;
  #count = 0;
  #kinds = new Map<string, number>();
  #summary: string;
  #fields: Record<string, unknown>;

  /** `summary` and `fields`: the message and fields of the line that counts what a window held. */
  constructor(write: BurstWriter, summary: string, fields: Record<string, unknown> = {}, windowMs = BURST_WINDOW_MS) {
    this.#write = write;
    this.#summary = summary;
    this.#fields = fields;
    this.#windowMs = windowMs;
  }

  /** One event of kind `kind`; `fields` and `msg` are logged only when it opens a burst. */
  hit(kind: string, fields: Record<string, unknown>, msg: string): void {
    if (this.#timer === null) {
      this.#write(fields, msg);
      this.#arm();
      return;
    }
    this.#count++;
    this.#kinds.set(kind, (this.#kinds.get(kind) ?? 0) + 1);
  }

  #arm(): void {
    this.#timer = setTimeout(() => this.#flush(), this.#windowMs);
    this.#timer.unref();
  }

  #flush(): void {
    this.#timer = null;
    if (this.#count === 0) return; // quiet for a whole window: the next event is logged at once
    this.#write(
      {
        ...this.#fields,
        count: this.#count,
        kinds: Object.fromEntries(this.#kinds),
        windowSeconds: this.#windowMs / 1000,
      },
      this.#summary,
    );
    this.#count = 0;
    this.#kinds.clear();
    this.#arm(); // still in a burst: the next line waits for the end of the next window
  }
}
