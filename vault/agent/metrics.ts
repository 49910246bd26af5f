// The vault side's Prometheus metrics (prom-client), for the single vault's front and the fleet's
// operator listener alike: relayed requests by type and outcome and their latency, as the front
// sees them; leader changes; and, from each replica's own report (protocol/metrics-wire.ts), commit
// latency, attempts charged, lockouts and other record effects, token call latency and failures,
// snapshots. Labels are replica names, session steps, operations and error codes: never a user, a
// key or request content. The type of a request is the public session step of its frame (hello or
// next: what every relay already sees); what the device asked for is inside the session and stays there.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { LATENCY_BOUNDS, emptyReplicaMetrics, type BucketCounts, type ReplicaMetrics } from '../../protocol/metrics-wire.ts';
import { SESSION_VERSION, SessionKind } from '../../protocol/session.ts';

/** The public session step of a relayed body: what /metrics may call its type. */
export function requestType(body: Uint8Array): 'hello' | 'next' | 'other' {
  if (body.length < 2 || body[0] !== SESSION_VERSION) return 'other';
  return body[1] === SessionKind.Hello ? 'hello' : body[1] === SessionKind.Next ? 'next' : 'other';
}

/** An outcome label from a bounded alphabet (codes are upper-case identifiers; anything else is OTHER). */
export function outcomeLabel(ok: boolean, code?: string): string {
  if (ok) return 'ok';
  return code && /^[A-Z][A-Z0-9_]{0,39}$/.test(code) ? code : 'OTHER';
}

const OPS = /^[a-zA-Z]{1,20}$/;
const EFFECTS = /^[a-z][a-z-]{0,20}$/;

export class VaultMetrics {
  readonly registry = new Registry();
  private readonly requests = new Counter({ name: 'bkv_requests_total', help: 'Relayed device requests by session step (hello, next) and outcome (ok or the error code)', labelNames: ['type', 'outcome'] as const, registers: [this.registry] });
  private readonly requestSeconds = new Histogram({ name: 'bkv_request_duration_seconds', help: 'Time from a relayed request reaching the front to its reply, by session step', labelNames: ['type'] as const, buckets: [...LATENCY_BOUNDS], registers: [this.registry] });
  private readonly leaderChanges = new Counter({ name: 'bkv_leader_changes_total', help: 'Replicas becoming leader (a new term), by replica', labelNames: ['replica'] as const, registers: [this.registry] });
  private readonly commitSeconds = new Histogram({ name: 'bkv_commit_duration_seconds', help: 'Leader side: a proposal\'s time from append to applied after commit on a quorum, by replica', labelNames: ['replica'] as const, buckets: [...LATENCY_BOUNDS], registers: [this.registry] });
  private readonly attempts = new Counter({ name: 'bkv_attempts_charged_total', help: 'Password attempts charged (committed Attempt entries applied), by replica', labelNames: ['replica'] as const, registers: [this.registry] });
  private readonly lockouts = new Counter({ name: 'bkv_lockouts_total', help: 'Records locked at their limit (K erased), by replica', labelNames: ['replica'] as const, registers: [this.registry] });
  private readonly effects = new Counter({ name: 'bkv_record_effects_total', help: 'Committed entries applied, by their effect on a record (stored, charged, reset, failed, locked, deleted...), by replica', labelNames: ['replica', 'effect'] as const, registers: [this.registry] });
  private readonly tokenSeconds = new Histogram({ name: 'bkv_token_call_duration_seconds', help: 'PKCS#11 token calls by operation, by replica', labelNames: ['replica', 'op'] as const, buckets: [...LATENCY_BOUNDS], registers: [this.registry] });
  private readonly tokenErrors = new Counter({ name: 'bkv_token_call_errors_total', help: 'Token calls that failed, by operation, by replica', labelNames: ['replica', 'op'] as const, registers: [this.registry] });
  private readonly snapshots = new Counter({ name: 'bkv_snapshots_total', help: 'Snapshots a replica took (log compactions)', labelNames: ['replica'] as const, registers: [this.registry] });
  private readonly snapshotBytes = new Gauge({ name: 'bkv_snapshot_bytes', help: 'Size of the replica\'s last sealed snapshot, bytes', labelNames: ['replica'] as const, registers: [this.registry] });
  private readonly snapshotBytesTotal = new Counter({ name: 'bkv_snapshot_bytes_total', help: 'Bytes of sealed snapshots taken', labelNames: ['replica'] as const, registers: [this.registry] });
  /** The last report absorbed per replica: each scrape adds what changed since. */
  private readonly last = new Map<string, ReplicaMetrics>();

  get contentType(): string { return this.registry.contentType; }

  request(body: Uint8Array, ok: boolean, code: string | undefined, seconds: number): void {
    const type = requestType(body);
    this.requests.inc({ type, outcome: outcomeLabel(ok, code) });
    this.requestSeconds.observe({ type }, seconds);
  }

  leaderChange(replica: string): void {
    this.leaderChanges.inc({ replica });
  }

  /**
   * Adds what a replica's cumulative report gained since the last one. A report below the last
   * (the replica restarted and counts from 0) is taken whole.
   */
  absorb(replica: string, m: ReplicaMetrics): void {
    let prev = this.last.get(replica) ?? emptyReplicaMetrics();
    const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : 0);
    if (num(m.effects?.charged) < num(prev.effects.charged) || num(m.snapshots?.count) < prev.snapshots.count || sumCounts(m.commit) < sumCounts(prev.commit)) prev = emptyReplicaMetrics();
    addBuckets(this.commitSeconds, { replica }, prev.commit, m.commit);
    for (const [effect, n] of Object.entries(m.effects ?? {})) {
      if (!EFFECTS.test(effect)) continue;
      const d = num(n) - num(prev.effects[effect]);
      if (d <= 0) continue;
      if (effect === 'lockout') this.lockouts.inc({ replica }, d);
      else this.effects.inc({ replica, effect }, d);
      if (effect === 'charged') this.attempts.inc({ replica }, d);
    }
    for (const [op, t] of Object.entries(m.token ?? {})) {
      if (!OPS.test(op)) continue;
      const p = prev.token[op];
      addBuckets(this.tokenSeconds, { replica, op }, p?.seconds, t.seconds);
      const d = num(t.errors) - num(p?.errors);
      // inc by 0 shows the series (errors 0) as soon as the operation was called.
      this.tokenErrors.inc({ replica, op }, Math.max(0, d));
    }
    const ds = num(m.snapshots?.count) - prev.snapshots.count;
    this.snapshots.inc({ replica }, Math.max(0, ds));
    this.snapshotBytesTotal.inc({ replica }, Math.max(0, num(m.snapshots?.totalBytes) - prev.snapshots.totalBytes));
    this.snapshotBytes.set({ replica }, num(m.snapshots?.lastBytes));
    this.attempts.inc({ replica }, 0);
    this.lockouts.inc({ replica }, 0);
    this.last.set(replica, structuredClone(m));
  }

  text(): Promise<string> { return this.registry.metrics(); }
}

function sumCounts(b: BucketCounts | undefined): number {
  return (b?.counts ?? []).reduce((a, x) => a + (typeof x === 'number' ? x : 0), 0);
}

/**
 * The observations a cumulative bucket report gained: per bucket, its new count observed at its
 * new mean (which lies in that bucket), so the histogram's counts and sum come out exact.
 */
function addBuckets(h: Histogram<string>, labels: Record<string, string>, prev: BucketCounts | undefined, cur: BucketCounts | undefined): void {
  if (!cur || !Array.isArray(cur.counts) || cur.counts.length !== LATENCY_BOUNDS.length + 1) return;
  for (let i = 0; i < cur.counts.length; i++) {
    const dc = (cur.counts[i] ?? 0) - (prev?.counts[i] ?? 0);
    const ds = (cur.sums[i] ?? 0) - (prev?.sums[i] ?? 0);
    if (!(dc > 0) || dc > 1e7) continue;
    const mean = ds / dc;
    for (let k = 0; k < dc; k++) h.observe(labels, mean);
  }
}
