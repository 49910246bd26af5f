// Which replica a relayed device request enters the fleet at, for both fleet fronts (threads and
// processes). Two rules keep an honest device from losing attempts to a partition:
// - a session's second frame (Next) enters where its first (Hello) did: that replica reached the
//   leader holding the session, and a recovery's KE3 must not land on a replica cut off from it;
// - a Hello enters at the device's data center (the region hint) only if that replica reports a
//   live leader; otherwise at the leader itself, or, knowing none, round-robin.
// The session id is the device's ephemeral key at bytes 2..34 of both frames (protocol/session.ts):
// public, and already seen by every relay.
import { SESSION_VERSION, SessionKind } from '../../protocol/session.ts';

export interface RouteView {
  name: string;
  role: string;
  leader: string | null;
  healthy: boolean;
}

const AFFINITY_MS = 130_000;
const MAX_AFFINITIES = 100_000;

export class EntryRouter {
  private view = new Map<string, RouteView>();
  private rr = 0;
  private readonly affinity = new Map<string, { replica: string; until: number }>();
  private timer?: NodeJS.Timeout;
  /** Events noted so far, and the count at each replica's last one (a poll must not undo a newer event). */
  private notes = 0;
  private readonly noted = new Map<string, number>();

  constructor(
    private readonly names: readonly string[],
    private readonly isLive: (name: string) => boolean,
    private readonly poll: () => Promise<RouteView[]>,
    // The view follows the replicas' role and health events as they happen (note()); the poll is
    // the safety net for what no event says (a rejoining replica, a missed event). Polling every
    // 100 ms instead cost an idle five-replica fleet about 15 ms of CPU per second (docs/fleet.md).
    periodMs = 1000,
  ) {
    this.refreshNow();
    this.timer = setInterval(() => this.refreshNow(), periodMs);
    this.timer.unref();
  }

  /** Polls the replicas now (the timer does it every period). */
  refreshNow(): void {
    const asked = this.notes;
    this.poll().then((v) => {
      // A replica an event spoke of while the poll was out keeps the event's (newer) word.
      const next = new Map(v.map((x) => [x.name, x]));
      for (const [n, seq] of this.noted) if (seq > asked && this.view.has(n)) next.set(n, this.view.get(n)!);
      this.view = next;
    }, () => undefined);
  }

  /** What an event says of one replica, at once (its role, the leader it follows, its health). */
  note(name: string, change: Partial<Omit<RouteView, 'name'>>): void {
    const v = this.view.get(name) ?? { name, role: 'follower', leader: null, healthy: true };
    this.view.set(name, { ...v, ...change, name });
    this.noted.set(name, ++this.notes);
  }

  /** The replica for this relayed body (a device-vault session frame, or anything else). */
  pick(body: Uint8Array, hint: string | undefined): string | undefined {
    const live = this.names.filter((n) => this.isLive(n));
    if (live.length === 0) return undefined;
    const sid = sessionId(body);
    const now = Date.now();
    if (sid && body[1] === SessionKind.Next) {
      const a = this.affinity.get(sid);
      if (a && a.until > now && live.includes(a.replica)) return a.replica;
    }
    const chosen = this.entry(live, hint);
    if (sid && body[1] === SessionKind.Hello) {
      if (this.affinity.size >= MAX_AFFINITIES) this.sweep(now);
      this.affinity.set(sid, { replica: chosen, until: now + AFFINITY_MS });
    }
    return chosen;
  }

  close(): void {
    clearInterval(this.timer);
  }

  private entry(live: string[], hint: string | undefined): string {
    const leaderOf = (n: string) => {
      const v = this.view.get(n);
      if (!v?.healthy) return null;
      if (v.role === 'leader') return n;
      return v.leader && live.includes(v.leader) && this.view.get(v.leader)?.role === 'leader' ? v.leader : null;
    };
    if (hint && live.includes(hint) && leaderOf(hint)) return hint;
    const leader = live.find((n) => this.view.get(n)?.role === 'leader' && this.view.get(n)?.healthy);
    if (leader) return leader;
    return live[this.rr++ % live.length]!;
  }

  private sweep(now: number): void {
    for (const [k, a] of this.affinity) if (a.until <= now) this.affinity.delete(k);
    // Still full: the oldest go (insertion order).
    for (const k of this.affinity.keys()) {
      if (this.affinity.size < MAX_AFFINITIES) break;
      this.affinity.delete(k);
    }
  }
}

function sessionId(body: Uint8Array): string | null {
  if (body.length < 34 || body[0] !== SESSION_VERSION) return null;
  if (body[1] !== SessionKind.Hello && body[1] !== SessionKind.Next) return null;
  return Buffer.from(body.subarray(2, 34)).toString('hex');
}
