// The mutation check: seeded bugs the deterministic simulator must catch. Six live in the replica
// core and the firmware as guarded lines (vault/replica/core.ts `Mutation`); one is a firmware bug
// made by wrapping the real session gate. Each is run over seeds of the random vault workload until the oracle or
// the checker reports a violation.
import type { FirmwareInput, FirmwareOutput } from '../../vault/firmware/firmware.ts';
import type { SessionGate } from '../../vault/firmware/gate.ts';
import { decodeEntry, encodeEntry } from '../../vault/firmware/entries.ts';
import type { FirmwareLike, Mutation } from '../../vault/replica/core.ts';
import { randomVaultRun, type VaultRunOptions } from './workload.ts';

export interface MutationCase {
  name: string;
  /** What the bug breaks, in one line. */
  breaks: string;
  run: Pick<VaultRunOptions, 'mutation' | 'wrapFirmware' | 'diskFaults' | 'bias'>;
}

function wrapGate(gate: SessionGate, outputs: (input: FirmwareInput, out: FirmwareOutput[]) => FirmwareOutput[]): FirmwareLike {
  return {
    step: (input) => outputs(input, gate.step(input)),
    digest: () => gate.digest(),
    get appliedIndex() { return gate.appliedIndex; },
    inspect: (u) => gate.inspect(u),
  };
}

/** Proposes a wrong password's Outcome as a success that resets the counter. */
const resetOnWrong = (gate: SessionGate): FirmwareLike => wrapGate(gate, (_input, out) => out.map((o) => {
  if (o.kind !== 'propose') return o;
  const e = decodeEntry(o.entry);
  if (e.t !== 'Outcome' || e.ok) return o;
  return { ...o, entry: encodeEntry({ ...e, ok: true, reset: true }) };
}));

const core = (m: Mutation, diskFaults: boolean, bias?: VaultRunOptions['bias']): MutationCase['run'] => ({ mutation: m, diskFaults, bias });

export const MUTATION_CASES: readonly MutationCase[] = [
  { name: 'ke2-before-commit', breaks: 'a KE2 leaves before its Attempt committed', run: core('ke2-before-commit', false) },
  { name: 'reset-on-wrong-password', breaks: 'a wrong guess gives the attempts back', run: { wrapFirmware: resetOnWrong } },
  { name: 'apply-uncommitted', breaks: 'the firmware applies entries Raft has not committed', run: core('apply-uncommitted', false) },
  { name: 'accept-forged-peer', breaks: 'a vote or ack in another replica\'s name counts', run: core('accept-forged-peer', false, 'forge') },
  { name: 'skip-anchor', breaks: 'acks leave before the token anchor covers them', run: core('skip-anchor', true) },
  { name: 'vote-while-rejoining', breaks: 'a replica with a refused disk votes before it caught up', run: core('vote-while-rejoining', true) },
  { name: 'ignore-fork', breaks: 'a second instance of one identity votes and acks beside the first', run: core('ignore-fork', true, 'fork') },
];

/** Runs seeds from `first` until the mutation is caught; the seed that caught it, or null within `max`. */
export async function seedsToCatch(c: MutationCase, first: number, max: number): Promise<{ seed: number | null; tried: number; violation: string }> {
  for (let i = 0; i < max; i++) {
    const r = await randomVaultRun({ seed: first + i, ...c.run });
    if (r.violations.length > 0 || !r.converged) return { seed: first + i, tried: i + 1, violation: r.violations[0] ?? 'did not converge' };
  }
  return { seed: null, tried: max, violation: '' };
}
