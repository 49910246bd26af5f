// `bkv fleet status` must say why a fleet serves nothing: a re-replicating replica is not counted as a
// voter, and its line leads with the reason (ROLLED_BACK / TAMPERED), not "ok".
import { describe, expect, it } from 'vitest';
import { formatStatus } from '../../scripts/commands/fleet.ts';
import type { FleetStatus, ReplicaStatus } from '../../scripts/services.ts';

const rep = (name: string, role: ReplicaStatus['role'], reason = ''): ReplicaStatus => ({
  name, region: name, role, term: 4, commitIndex: 10, appliedIndex: 10, lag: 0, healthy: true, reason, leader: null,
});

describe('fleet status lines', () => {
  it('a rolled-back replica is shown with its reason and not counted as voting', () => {
    const s: FleetStatus = {
      leader: null, cpuMs: null, pid: null,
      replicas: [
        rep('us-east', 'down'),
        rep('us-west', 'rejoining', 'ROLLED_BACK: disk below its anchor at 17; re-replicating'),
        rep('eu-west', 'preCandidate'),
      ].map((r) => (r.role === 'down' ? { ...r, healthy: false, reason: 'CRASHED' } : r)),
    };
    const lines = formatStatus(s);
    expect(lines.find((l) => l.includes('us-west'))).toMatch(/ROLLED_BACK: disk below its anchor at 17/);
    expect(lines.find((l) => l.includes('us-west'))).not.toMatch(/\bok\b/);
    expect(lines.at(-1)).toMatch(/1 of 3 replicas voting, quorum 2: NO QUORUM, the fleet serves nothing/);
  });
});
