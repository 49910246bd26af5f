// Placeholder walkthrough (`npm start`): until the real one exists, provision the default fleet
// (idempotently) and show the doctor's report.
import type { Command } from '../cli.ts';
import { command as provision } from './provision.ts';
import { command as doctor } from './doctor.ts';

export const command: Command = {
  name: 'walkthrough',
  summary: 'provision the default fleet (idempotent) and run the doctor',
  help: `usage: bkv walkthrough

Provisions the default state directory (.bkv, five SoftHSM2 tokens) if it is not complete, then runs
\`bkv doctor\` on it. The full walkthrough (backup, password recovery, faults) replaces this later.`,
  async run(argv) {
    if (argv.length) {
      console.error('bkv walkthrough takes no options yet');
      return 2;
    }
    const code = await provision.run([]);
    if (code !== 0) return code;
    console.log('');
    return doctor.run([]);
  },
};
