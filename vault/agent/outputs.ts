// What a host does with the firmware's outputs, the same for the solo vault and a fleet replica:
// hand replies to whoever waits on the request, propose entries to the log (a refused proposal goes
// back in as proposalFailed), pass snapshots to compaction, report health changes.
import { BkvError } from '../../protocol/errors.ts';
import type { FirmwareInput, FirmwareOutput } from '../firmware/firmware.ts';
import type { ReplicatedLog } from './log.ts';

export interface OutputHost {
  /** Reply callbacks by request id; each is removed when its reply arrives. */
  waiting: Map<number, (body: Uint8Array, hint?: string) => void>;
  log: Pick<ReplicatedLog, 'propose' | 'compact'>;
  /** Steps the firmware with an input and performs what it outputs. */
  run(input: FirmwareInput): void;
  health(h: { healthy: boolean; code: string; reason: string }): void;
}

export function performOutput(o: FirmwareOutput, host: OutputHost): void {
  switch (o.kind) {
    case 'reply': {
      const done = host.waiting.get(o.requestId);
      host.waiting.delete(o.requestId);
      done?.(o.body, o.hint);
      return;
    }
    case 'propose':
      host.log.propose(o.entry).catch((e: unknown) => {
        const code = e instanceof BkvError ? e.code : 'UNAVAILABLE';
        host.run({ kind: 'proposalFailed', tag: o.tag, code });
      });
      return;
    case 'snapshot':
      host.log.compact(o.index, o.state).catch(() => undefined); // a failure marks the log failed -> fault
      return;
    case 'health':
      host.health({ healthy: o.healthy, code: o.code, reason: o.reason });
      return;
  }
}
