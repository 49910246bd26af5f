// What a replica reports of its own counters and latencies to whatever serves /metrics for it (its
// runner across a thread or process boundary, or the single vault's front): cumulative counts in
// fixed latency buckets, so the reader turns differences into Prometheus observations without
// the samples themselves crossing over. Numbers only: no user, no key, no request content.

/** Upper bounds (seconds) of the latency buckets every producer and /metrics use. */
export const LATENCY_BOUNDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] as const;

/** Cumulative count and sum per bucket (the last one is +Inf): plain data, structured-clone safe. */
export interface BucketCounts {
  counts: number[];
  sums: number[];
}

export function emptyBuckets(): BucketCounts {
  return { counts: new Array<number>(LATENCY_BOUNDS.length + 1).fill(0), sums: new Array<number>(LATENCY_BOUNDS.length + 1).fill(0) };
}

/** Adds one observation of `seconds` to its bucket. */
export function observeInto(b: BucketCounts, seconds: number): void {
  let i = LATENCY_BOUNDS.findIndex((ub) => seconds <= ub);
  if (i < 0) i = LATENCY_BOUNDS.length;
  b.counts[i]! += 1;
  b.sums[i]! += seconds;
}

/** A replica's own report. Counters restart at 0 with the replica (a reader treats a drop as a restart). */
export interface ReplicaMetrics {
  /** Leader side: a proposal's wait from append to commit on a quorum. */
  commit: BucketCounts;
  /** Applied entries by their effect on the record (firmware ApplyEffect kinds), and lockouts (records locked just now). */
  effects: Record<string, number>;
  /** Token calls by operation: latency buckets and failures. */
  token: Record<string, { seconds: BucketCounts; errors: number }>;
  /** Snapshots this replica took (compactions) and the size of the last one, bytes. */
  snapshots: { count: number; lastBytes: number; totalBytes: number };
}

export function emptyReplicaMetrics(): ReplicaMetrics {
  return { commit: emptyBuckets(), effects: {}, token: {}, snapshots: { count: 0, lastBytes: 0, totalBytes: 0 } };
}
