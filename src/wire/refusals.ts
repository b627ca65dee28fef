/**
 * What a process refused from strangers, counted by reason. Every reason
 * comes from the wire one way or another, so the count is bounded: past
 * MAX_REFUSAL_REASONS - 1 distinct reasons, the rest are counted together
 * under 'other reasons' (a flood of garbage cannot grow the map, nor a report).
 */
import { MAX_REFUSAL_REASONS } from './protocol.js';

export const OTHER_REASONS = 'other reasons';

export class Refusals extends Map<string, number> {
  /** Adds `n` refusals for `why`. */
  count(why: string, n = 1): void {
    const key = this.has(why) || this.size < MAX_REFUSAL_REASONS - 1 ? why : OTHER_REASONS;
    this.set(key, (this.get(key) ?? 0) + n);
  }

  /** Adds every count of `from`, each reason prefixed with `prefix` (e.g. 'coordinator: '). */
  add(from: Iterable<[string, number]>, prefix = ''): this {
    for (const [why, n] of from) this.count(`${prefix}${why}`, n);
    return this;
  }

  /** One line: '12× reason; 3× other reason' ('' when none). */
  line(): string {
    return [...this].map(([why, n]) => `${n}× ${why}`).join('; ');
  }
}
