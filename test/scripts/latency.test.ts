// HDR percentiles of a run's operations (scripts/chaos/latency.ts) against values worked out by hand.
import { describe, expect, it } from 'vitest';
import { latencyByOp } from '../../scripts/chaos/latency.ts';

const op = (kind: 'attempt' | 'status' | 'register', start: number, ms: number | null) => ({ op: kind, start, end: ms === null ? null : start + ms });

describe('latencyByOp', () => {
  it('gives each kind of operation its percentiles, to 3 significant digits', () => {
    // 1..1000 ms, one each: p50 is 500, p90 900, p99 990, p99.9 999, max 1000.
    const ops = Array.from({ length: 1000 }, (_, i) => op('attempt', i * 7, i + 1));
    const [row] = latencyByOp(ops);
    expect(row!.op).toBe('attempt');
    expect(row!.count).toBe(1000);
    for (const [got, want] of [[row!.p50, 500], [row!.p90, 900], [row!.p99, 990], [row!.p999, 999], [row!.max, 1000]] as const) {
      expect(Math.abs(got - want) / want).toBeLessThan(0.001);
    }
    // The curve rises from the least value to the max.
    expect(row!.curve[0]).toEqual([0, 1]);
    expect(row!.curve.at(-1)![1]).toBeCloseTo(1000, 0);
    for (let i = 1; i < row!.curve.length; i++) expect(row!.curve[i]![1]).toBeGreaterThanOrEqual(row!.curve[i - 1]![1]);
  });

  it('keeps sub-millisecond latencies and leaves out operations that never completed', () => {
    const rows = latencyByOp([op('status', 0, 0.25), op('status', 1, 0.25), op('status', 2, null), op('register', 0, 20_000), op('attempt', 5, 3)]);
    expect(rows.map((r) => r.op)).toEqual(['register', 'attempt', 'status']);
    const status = rows.find((r) => r.op === 'status')!;
    expect(status.count).toBe(2);
    expect(status.p50).toBeCloseTo(0.25, 3);
    expect(rows[0]!.max).toBeCloseTo(20_000, -2);
    expect(latencyByOp([op('status', 0, null)])).toEqual([]);
  });
});
