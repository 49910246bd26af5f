// The entry router's view follows role and health events at once (no 100 ms polling needed), and a
// poll that was out when an event came cannot put the older word back; one asked after is taken.
import { describe, expect, it } from 'vitest';
import { SESSION_VERSION, SessionKind } from '../../protocol/session.ts';
import { EntryRouter, type RouteView } from '../../vault/fleet/router.ts';

const names = ['a', 'b', 'c'];
const hello = (i: number) => { const b = new Uint8Array(64); b[0] = SESSION_VERSION; b[1] = SessionKind.Hello; b[2] = i; return b; };
const led = (leader: string): RouteView[] => names.map((n) => ({ name: n, role: n === leader ? 'leader' : 'follower', leader, healthy: true }));
const tick = () => new Promise((res) => setImmediate(res));

/** A router whose polls the test answers by hand. */
function rig() {
  const pending: ((v: RouteView[]) => void)[] = [];
  const r = new EntryRouter(names, () => true, () => new Promise((res) => { pending.push(res); }), 60_000);
  return { r, pending, poll: () => r.refreshNow() };
}

describe('EntryRouter', () => {
  it('routes by the latest event at once', async () => {
    const { r, pending } = rig();
    try {
      pending.shift()!(led('a'));
      await tick();
      expect(r.pick(hello(1), undefined)).toBe('a');
      r.note('a', { role: 'follower', leader: 'b' });
      r.note('b', { role: 'leader', leader: 'b' });
      r.note('c', { leader: 'b' });
      expect(r.pick(hello(2), undefined)).toBe('b');
      expect(r.pick(hello(3), 'c')).toBe('c'); // c knows the live leader: enter at the device's region
      r.note('c', { healthy: false });
      expect(r.pick(hello(4), 'c')).toBe('b'); // not at an unhealthy one
    } finally {
      r.close();
    }
  });

  it('a poll out during the events does not undo them; the next one is taken whole', async () => {
    const { r, pending, poll } = rig();
    try {
      r.note('a', { role: 'follower', leader: 'b' });
      r.note('b', { role: 'leader', leader: 'b' });
      pending.shift()!(led('a')); // asked at start, before the events: stale
      await tick();
      expect(r.pick(hello(5), undefined)).toBe('b');
      poll();
      pending.shift()!(led('c')); // asked after them: c leads now
      await tick();
      expect(r.pick(hello(6), undefined)).toBe('c');
    } finally {
      r.close();
    }
  });
});
