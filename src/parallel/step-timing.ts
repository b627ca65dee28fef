/**
 * A step's timeline, kept the same way by every strategy: spans measured on
 * performance.now()'s clock (the engine's layers, the sockets' sends and
 * waits, the optimizer) and reported in ms from the step's start, so that a
 * layer and the transfer that ran behind it line up in the trace.
 *
 * Always on: a span is two clock reads and a push, some forty per step, and
 * nothing here waits on the device.
 */
import { performance } from 'node:perf_hooks';
import type { LayerSpan } from '../model/engine.js';
import type { TrafficReport } from '../wire/traffic.js';
import type { StepDetail, StepSpan } from './strategy.js';

export class StepTimeline {
  /** the step's start: every span is reported from here */
  readonly t0 = performance.now();
  /** handed to the engine (PassOptions.layerSpans) of each pass of the step */
  private readonly passes: Array<{ label: string; spans: LayerSpan[] }> = [];
  private readonly spans: StepSpan[] = [];

  /** A fresh list for one engine pass; `label` tells passes apart in span names (a micro-batch), '' for the only one. */
  layers(label = ''): LayerSpan[] {
    const spans: LayerSpan[] = [];
    this.passes.push({ label, spans });
    return spans;
  }

  /** A span from `from` to `to` (performance.now() values). */
  span(cat: StepSpan['cat'], name: string, from: number, to: number): void {
    this.spans.push({ cat, name, startMs: from - this.t0, durMs: Math.max(0, to - from) });
  }

  /** The traffic's send and wait spans, already on this clock. */
  traffic(report: Pick<TrafficReport, 'sends' | 'waits'>): void {
    for (const s of report.sends) this.span('send', s.name, s.startMs, s.startMs + s.durMs);
    for (const s of report.waits) this.span('wait', s.name, s.startMs, s.startMs + s.durMs);
  }

  /** The step's detail: `figures` plus the process's memory and every span (layers first, as they ran). */
  detail(figures: Omit<StepDetail, 'spans' | 'rssBytes'>): StepDetail {
    const layers: StepSpan[] = this.passes.flatMap(({ label, spans }) => spans.map((s) => ({
      cat: 'compute' as const, name: `${s.layer} ${s.phase}${label ? ` (${label})` : ''}`, startMs: s.startMs - this.t0, durMs: s.endMs - s.startMs,
    })));
    return { ...figures, rssBytes: process.memoryUsage().rss, spans: [...layers, ...this.spans] };
  }
}

/**
 * What a step sent and how long it sat idle awaiting peers, measured the same
 * way by every strategy that talks: bytes from the communicator's counter
 * (keyed tensors and ring pieces alike), waits as the event loop's idle time
 * (with pipelined micro-batches or a ring running behind backward, the waits
 * overlap each other and compute, so they are not summed), and the traffic of
 * every source merged into one report.
 */
export class StepMeter {
  readonly timeline = new StepTimeline();
  private readonly loop = performance.eventLoopUtilization();
  private readonly sentBefore: number;

  constructor(private readonly counter: { bytesSent: number }, private readonly sources: Array<{ take(): TrafficReport }>) {
    this.sentBefore = counter.bytesSent;
    for (const s of sources) s.take(); // what arrived between steps (evaluation's exchanges, the last all-gather's late pieces) is not this step's
  }

  /** The step's waits, bytes and traffic so far; call once, at its end. */
  finish(): { waitMs: number; bytesSent: number; traffic: TrafficReport } {
    const waitMs = performance.eventLoopUtilization(this.loop).idle;
    const traffic: TrafficReport = { sentBytes: 0, receivedBytes: 0, sendMs: 0, sentBy: {}, sends: [], waits: [] };
    for (const s of this.sources) {
      const t = s.take();
      traffic.sentBytes += t.sentBytes;
      traffic.receivedBytes += t.receivedBytes;
      traffic.sendMs += t.sendMs;
      for (const [k, v] of Object.entries(t.sentBy)) traffic.sentBy[k] = (traffic.sentBy[k] ?? 0) + v;
      traffic.sends.push(...t.sends);
      traffic.waits.push(...t.waits);
    }
    return { waitMs, bytesSent: this.counter.bytesSent - this.sentBefore, traffic };
  }
}
