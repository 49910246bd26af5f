// `bkv fleet status` must say why a fleet serves nothing: a re-replicating replica is shown with its
// reason, not "ok"; a replica that is healthy but cut off is shown as not serving, with the reason;
// the faults in force are listed with who asked; the summary counts replicas that serve, not
// replicas that are merely up.
import { describe, expect, it } from 'vitest';
import { formatStatus } from '../../scripts/commands/fleet.ts';
import type { FleetStatus, ReplicaStatus } from '../../scripts/services.ts';

const rep = (name: string, role: ReplicaStatus['role'], servesNot: string, extra: Partial<ReplicaStatus> = {}): ReplicaStatus => ({
  name, region: name, role, term: 4, commitIndex: 10, appliedIndex: 10, lag: 0, healthy: true, reason: '', leader: null,
  serves: servesNot === '', servesNot, reachesLeader: null, reachable: 3, ...extra,
});

describe('fleet status lines', () => {
  it('a rolled-back replica is shown with its reason and the fleet serves nothing', () => {
    const s: FleetStatus = {
      leader: null, cpuMs: null, pid: null, faults: [],
      replicas: [
        rep('us-east', 'down', 'CRASHED', { healthy: false, reason: 'CRASHED' }),
        rep('us-west', 'rejoining', 'ROLLED_BACK: disk below its anchor at 17; re-replicating', { reason: 'ROLLED_BACK: disk below its anchor at 17; re-replicating' }),
        rep('eu-west', 'preCandidate', 'NO_LEADER: no replica leads'),
      ],
    };
    const lines = formatStatus(s);
    const row = lines.find((l) => l.includes('us-west') && l.includes('rejoining'))!;
    expect(row).toMatch(/ROLLED_BACK/);
    expect(row).not.toMatch(/\bok\b/);
    expect(lines).toContain('  us-west: ROLLED_BACK: disk below its anchor at 17; re-replicating');
    expect(lines).toContain('  us-east: CRASHED');
    expect(lines.at(-1)).toBe('leader: none; 0 of 3 replicas serve, quorum 2: the fleet serves nothing');
  });

  it('healthy replicas cut off from the leader do not count as serving, and the partition is listed with who asked', () => {
    const cut = 'CANNOT_REACH_LEADER: the link us-east -> eu-west is cut; in a minority: reaches 2 of 5 replicas, a quorum is 3';
    const s: FleetStatus = {
      leader: 'us-east', cpuMs: null, pid: null,
      faults: [{ op: 'partition', replicas: ['us-east', 'us-west', 'ap-southeast', 'eu-west', 'sa-east'], what: '{us-east, us-west, ap-southeast} | {eu-west, sa-east}', since: '2026-12-06T22:10:05.123Z', by: 'operator key (alice pid 42 (bkv fleet fault partition))' }],
      replicas: [
        rep('us-east', 'leader', '', { reachesLeader: true, reachable: 3 }),
        rep('us-west', 'follower', '', { reachesLeader: true, reachable: 3, leader: 'us-east' }),
        rep('eu-west', 'preCandidate', cut, { reachesLeader: false, reachable: 2, lag: -1 }),
        rep('ap-southeast', 'follower', '', { reachesLeader: true, reachable: 3, leader: 'us-east' }),
        rep('sa-east', 'preCandidate', cut, { reachesLeader: false, reachable: 2, lag: -1 }),
      ],
    };
    const lines = formatStatus(s);
    const row = (n: string) => lines.find((l) => l.startsWith(`  ${n}`) || l.startsWith(`* ${n}`))!;
    expect(row('eu-west')).toMatch(/ok\s+NO\s+2\/5 NO\s+NO$/);
    expect(row('us-east')).toMatch(/^\* us-east .*ok\s+yes\s+3\/5\s+yes$/);
    expect(lines).toContain(`  eu-west: ${cut}`);
    expect(lines).toContain('faults in force:');
    const fault = lines.find((l) => l.includes('partition'))!;
    expect(fault).toContain('{us-east, us-west, ap-southeast} | {eu-west, sa-east}');
    expect(fault).toContain('22:10:05 UTC');
    expect(fault).toContain('alice pid 42');
    expect(lines.at(-1)).toBe('leader: us-east (term 4); 3 of 5 replicas serve, quorum 3');
  });

  it('shows voters and learners, the membership change in flight and the standby tokens', () => {
    const s: FleetStatus = {
      leader: 'us-east', cpuMs: null, pid: null, faults: [],
      replicas: [
        rep('us-east', 'leader', '', { member: 'voter' }),
        rep('us-west', 'follower', '', { member: 'voter', leader: 'us-east' }),
        rep('eu-west', 'follower', '', { member: 'voter', leader: 'us-east' }),
        rep('ap-southeast', 'follower', '', { member: 'learner', leader: 'us-east', lag: 40 }),
      ],
      members: { voters: ['eu-west', 'us-east', 'us-west'], learners: ['ap-southeast'], committed: true },
      change: { op: 'replace', replicas: ['us-west', 'ap-southeast'], step: 'ap-southeast is a learner; catching up', since: '2026-12-06T23:40:01.000Z', by: 'operator key (bob)' },
      standby: [{ name: 'sa-east', standby: 'spare' }],
    };
    const lines = formatStatus(s);
    expect(lines[0]).toMatch(/serves\s+member$/);
    expect(lines.find((l) => l.includes('ap-southeast') && l.includes('follower'))).toMatch(/learner$/);
    expect(lines).toContain('configuration: voters eu-west, us-east, us-west; learners ap-southeast');
    expect(lines).toContain('membership change in flight: replace us-west -> ap-southeast (by operator key (bob), since 23:40:01 UTC): ap-southeast is a learner; catching up');
    expect(lines).toContain('standby tokens: sa-east (spare)');
    expect(lines.at(-1)).toBe('leader: us-east (term 4); 4 of 4 replicas serve, quorum 2');
  });
});
