// `bkv doctor`'s look at the replicas' disks: every sealed entry and snapshot opens under the
// replica's token, the entries chain from the snapshot to the end, and the token's anchor is on
// that chain (not past its end: a rolled-back disk). A failure is an integrity failure of the
// untrusted host's copy, not a passing condition: it says so, and what the replica will do about it.
import { existsSync } from 'node:fs';
import { BkvError } from '../protocol/errors.ts';
import { openToken } from '../hsm-adapter/pkcs11-token.ts';
import type { FleetState } from '../softhsm/state.ts';
import { checkDisk } from '../vault/agent/disk-check.ts';
import { RaftStore } from '../vault/agent/raft-store.ts';
import { replicaDbDir } from '../vault/agent/replica.ts';
import { SealedStorage, anchorOwner } from '../vault/firmware/storage.ts';

export interface DiskCheck {
  replica: string;
  status: 'pass' | 'fail' | 'missing';
  /** Whose log the disk and anchor hold: the single vault's, the fleet's (Raft), or none yet. */
  log?: 'solo' | 'fleet' | 'none';
  detail: string;
  code?: string;
}

/** Checks each replica's disk against its token (the caller finalises the module afterwards). */
export async function checkReplicaDisks(state: FleetState): Promise<DiskCheck[]> {
  const out: DiskCheck[] = [];
  for (const rep of state.replicas) {
    const dir = replicaDbDir(state.stateDir, rep.name);
    if (!existsSync(dir)) {
      out.push({ replica: rep.name, status: 'missing', detail: `no disk yet at ${dir} (this replica has never served)` });
      continue;
    }
    // A disk that does not even read can crash the process that maps it: a child reads it first.
    const readable = checkDisk(dir);
    if (!readable.ok) {
      out.push({ replica: rep.name, status: 'fail', code: 'TAMPERED', detail: `TAMPERED: ${dir} does not read (${readable.why})` });
      continue;
    }
    const token = openToken({ modulePath: state.modulePath, token: rep.tokenLabel, pin: state.pinFor(rep.tokenLabel), sealScheme: state.sealSchemeFor(rep.tokenLabel) });
    try {
      out.push(await checkOne(rep.name, dir, token));
    } finally {
      token.close();
    }
  }
  return out;
}

async function checkOne(name: string, dir: string, token: Parameters<typeof anchorOwner>[0]): Promise<DiskCheck> {
  // A running replica may append between our read of the disk and of the anchor, which would look
  // like a disk behind its anchor: read again before calling that a rollback.
  for (let attempt = 1; ; attempt++) {
    const store = RaftStore.open(dir);
    let items;
    try {
      items = store.readAll();
    } catch (e) {
      return { replica: name, status: 'fail', code: 'TAMPERED', detail: `TAMPERED: ${(e as Error).message}` };
    } finally {
      await store.close();
    }
    const owner = anchorOwner(token, name);
    const log = owner === 'fleet' || (owner === 'none' && items.hardState) ? 'fleet' : owner === 'none' && items.entries.length === 0 && !items.snapshot ? 'none' : 'solo';
    try {
      const v = new SealedStorage(token, log === 'fleet' ? `${name}/raft` : name).verify(items);
      const what = log === 'fleet' ? 'the fleet\'s Raft log' : log === 'solo' ? 'the single vault\'s log' : 'nothing yet';
      return {
        replica: name, status: 'pass', log,
        detail: `${what}: ${v.entries.length} sealed entries${v.snapshot ? ` after a snapshot at ${v.snapshot.index}` : ''} chained to index ${v.head.index}; ` +
          (v.anchor ? `the token's anchor at ${v.anchor.index} is on that chain` : 'no anchor in the token yet'),
      };
    } catch (e) {
      const code = e instanceof BkvError ? e.code : 'TAMPERED';
      if (code === 'ROLLBACK_DETECTED' && attempt < 3) continue;
      return { replica: name, status: 'fail', log, code, detail: `${code}: ${(e as Error).message}` };
    }
  }
}

/** The verdict's line for a failed disk: an integrity failure, and what the replica does about it. */
export function diskProblem(d: DiskCheck): string {
  return `replica ${d.replica}'s disk failed its integrity check (${d.detail}): the host's copy was altered, corrupted or rolled back. ` +
    'This is not transient: the replica refuses that disk (in a fleet it re-replicates from its peers and votes for nothing meanwhile; a single vault cannot serve it)';
}
