/**
 * One mode's worker timelines as a Chrome trace (the JSON Trace Event Format
 * that Perfetto and chrome://tracing open): a process per worker, a thread
 * per kind of work (compute, send, wait, optimizer), a complete event per span.
 *
 * Written by hand rather than with `chrome-trace-event`: that library traces
 * the running process (it stamps every event with its own pid and
 * process.hrtime), emits a bare array through a Node stream, and has no
 * metadata events; here the spans are already measured and only need mapping.
 * However many workers a mode ran, each is a process track of its own.
 */
import type { ModeMeasure, Span, StepSplit } from './types.js';

/** The order of the threads within a worker, top to bottom. */
const CATEGORIES: Array<keyof StepSplit> = ['compute', 'send', 'wait', 'optimizer'];

export type TraceEvent =
  | { ph: 'M'; name: 'process_name' | 'thread_name'; pid: number; tid: number; args: { name: string } }
  | { ph: 'M'; name: 'process_sort_index' | 'thread_sort_index'; pid: number; tid: number; args: { sort_index: number } }
  | { ph: 'X'; name: string; cat: keyof StepSplit; pid: number; tid: number; ts: number; dur: number; args: { step: number } };

export interface ChromeTrace {
  traceEvents: TraceEvent[];
  displayTimeUnit: 'ms';
}

/**
 * Rank r is pid r + 1: pid 0 is the kernel's idle task to Perfetto, which
 * treats it specially. The process is still named after the rank.
 */
export function pidOf(rank: number): number {
  return rank + 1;
}

/** 'worker 3', and where it sits in model mode's grid: 'worker 3 · tower 1', 'worker 3 · row 1, tower 1'. */
export function workerName(mode: ModeMeasure, rank: number): string {
  const { replicas, towers } = mode;
  if (towers === undefined || replicas === undefined) return `worker ${rank}`;
  const tower = `tower ${rank % towers}`;
  return `worker ${rank} · ${replicas > 1 ? `row ${Math.floor(rank / towers)}, ${tower}` : tower}`;
}

export function chromeTrace(mode: ModeMeasure): ChromeTrace {
  const traceEvents: TraceEvent[] = [];
  for (const worker of mode.workers) {
    const pid = pidOf(worker.rank);
    traceEvents.push(
      { ph: 'M', name: 'process_name', pid, tid: 0, args: { name: workerName(mode, worker.rank) } },
      { ph: 'M', name: 'process_sort_index', pid, tid: 0, args: { sort_index: worker.rank } },
    );
    let tid = 1; // tid 0 is left out for the same reason as pid 0
    for (const cat of CATEGORIES) {
      const lanes = packLanes(worker.spans.filter((s) => s.cat === cat));
      lanes.forEach((lane, i) => {
        const name = lanes.length > 1 ? `${cat} ${i + 1}` : cat;
        traceEvents.push(
          { ph: 'M', name: 'thread_name', pid, tid, args: { name } },
          { ph: 'M', name: 'thread_sort_index', pid, tid, args: { sort_index: tid } },
          ...lane.map((s) => completeEvent(s, pid, tid)),
        );
        tid++;
      });
    }
  }
  return { traceEvents, displayTimeUnit: 'ms' };
}

/** Milliseconds to the format's microseconds, kept to the nanosecond (no float noise like 1100.0000000000002). */
export function micros(ms: number): number {
  return Math.round(ms * 1e6) / 1e3;
}

function completeEvent(span: Span, pid: number, tid: number): TraceEvent {
  return { ph: 'X', name: span.name, cat: span.cat, pid, tid, ts: micros(span.startMs), dur: micros(span.durMs), args: { step: span.step } };
}

/**
 * Complete events on one thread must nest (a child inside its parent) or follow
 * one another; viewers draw partial overlaps wrongly or drop them. Spans of
 * one kind can overlap (two buckets in flight), so such a span moves to the
 * next lane, a thread of its own.
 */
function packLanes(spans: Span[]): Span[][] {
  const sorted = [...spans].sort((a, b) => a.startMs - b.startMs || b.durMs - a.durMs);
  const lanes: Array<{ spans: Span[]; open: number[] }> = [];
  for (const span of sorted) {
    // the same numbers a viewer sees: ts and ts + dur
    const start = micros(span.startMs);
    const end = start + micros(span.durMs);
    let lane = lanes.find((l) => fits(l.open, start, end));
    if (!lane) {
      lane = { spans: [], open: [] };
      lanes.push(lane);
    }
    lane.spans.push(span);
    lane.open.push(end);
  }
  return lanes.map((l) => l.spans);
}

/**
 * Whether a span [start, end] can go on a lane whose open spans end at `open`
 * (innermost last): spans that ended before it starts are closed, and it fits
 * if nothing is open or it ends within the innermost open span. Spans come
 * sorted by start, so a span closed here is closed for every later one too.
 */
function fits(open: number[], start: number, end: number): boolean {
  while (open.length > 0 && open[open.length - 1]! <= start) open.pop();
  return open.length === 0 || end <= open[open.length - 1]!;
}
