// Latency of a run's operations as HDR histograms (hdr-histogram-js): per kind of operation, the
// percentiles a report table and summary.json give, and the percentile curve the page plots. HDR
// keeps 3 significant digits at every magnitude, so a 2 ms status read and a 20 s timeout share one
// histogram without bucket edges chosen in advance. Pure: history in, numbers out.
import { build } from 'hdr-histogram-js';
import type { HistoryOp } from './workload.ts';

export interface LatencyRow {
  op: string;
  count: number;
  /** ms; HDR's values, exact to 3 significant digits */
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
  /** (percentile, ms) points of the curve, at 0, 50, 75, 87.5, ... 99.99 and 100 */
  curve: [number, number][];
}

/** The percentiles of the curve: halving the distance to 100 each step, as HdrHistogram plots do. */
const CURVE = [0, 50, 75, 87.5, 93.75, 96.875, 98.4375, 99.21875, 99.609375, 99.8046875, 99.90234375, 99.951171875, 99.9755859375, 99.98779296875, 100];

/** Completed operations only (an open one has no latency); grouped by op, in a fixed order. */
export function latencyByOp(ops: readonly Pick<HistoryOp, 'op' | 'start' | 'end'>[]): LatencyRow[] {
  const byOp = new Map<string, number[]>();
  for (const o of ops) {
    if (o.end === null) continue;
    let list = byOp.get(o.op);
    if (!list) byOp.set(o.op, (list = []));
    list.push(Math.max(0, o.end - o.start));
  }
  const order = ['register', 'attempt', 'outcome', 'recover', 'status', 'delete'];
  const kinds = [...byOp.keys()].sort((a, b) => (order.indexOf(a) + 1 || 99) - (order.indexOf(b) + 1 || 99) || a.localeCompare(b));
  return kinds.map((op) => {
    // Values in µs, so sub-millisecond simulator latencies keep their digits; an hour at most.
    const h = build({ lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000, numberOfSignificantValueDigits: 3 });
    try {
      for (const ms of byOp.get(op)!) h.recordValue(Math.min(3_600_000_000, Math.max(1, Math.round(ms * 1000))));
      // A percentile names its bucket's highest equivalent value, which may lie above the true max.
      const max = Math.round(h.maxValue) / 1000;
      const at = (p: number) => Math.min(max, Math.round(h.getValueAtPercentile(p)) / 1000);
      return {
        op, count: h.totalCount, p50: at(50), p90: at(90), p99: at(99), p999: at(99.9), max,
        curve: CURVE.map((p) => [p, at(p)] as [number, number]),
      };
    } finally {
      h.destroy();
    }
  });
}
