// `bkv provision`: a SoftHSM2 fleet in a state directory (idempotent; --force starts over).
import { parseFlags, UsageError, type Command } from '../cli.ts';
import { provision } from '../../softhsm/provision.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import type { SealScheme } from '../../hsm-adapter/token.ts';

const help = `usage: bkv provision [--replicas N] [--state DIR] [--module PATH] [--module-args S] [--seal-scheme S] [--force] [--json]

Creates (or completes) a SoftHSM2 fleet in DIR (default .bkv/): softhsm2.conf with its own token
directory, one token per replica labelled by data center (us-east, us-west, eu-west, ap-southeast,
sa-east, eu-central, ...), the PINs in DIR/pins.json (mode 0600), the per-token keys, and the key
ceremony that imports the same OPRF seed and fleet AKE seed into every token. DIR/fleet.json records
the fleet and the key check values of the fleet secrets.

Running it again on a complete fleet changes nothing. Nothing is destroyed without --force.

  --replicas N     number of replicas (default 5, or the existing fleet's size)
  --state DIR      state directory (default .bkv in the working directory)
  --module PATH    PKCS#11 module (default BKV_PKCS11_MODULE or ${'/usr/lib/softhsm/libsofthsm2.so'})
  --module-args S  string handed to C_Initialize for modules that need one (NSS softoken:
                   configdir=...); recorded in fleet.json, so serve, fleet up and doctor use it
  --seal-scheme S  auto (default) | aes-256-gcm | aes-256-cbc-hmac-sha256 (recorded in fleet.json)
  --force          destroy an existing fleet in DIR and provision a new one
  --json           print the report as JSON`;

export const command: Command = {
  name: 'provision',
  summary: 'create the SoftHSM2 token fleet and run the key ceremony (idempotent)',
  help,
  async run(argv) {
    const { values } = parseFlags(argv, {
      replicas: { type: 'string' },
      state: { type: 'string' },
      module: { type: 'string' },
      'module-args': { type: 'string' },
      force: { type: 'boolean' },
      json: { type: 'boolean' },
      'seal-scheme': { type: 'string' },
    });
    const sealScheme = values['seal-scheme'];
    if (sealScheme !== undefined && !['auto', 'aes-256-gcm', 'aes-256-cbc-hmac-sha256'].includes(sealScheme)) {
      throw new UsageError('--seal-scheme must be auto, aes-256-gcm or aes-256-cbc-hmac-sha256');
    }
    let replicas: number | undefined;
    if (values.replicas !== undefined) {
      replicas = Number(values.replicas);
      if (!/^\d+$/.test(values.replicas) || replicas < 1 || replicas > 64) throw new UsageError(`--replicas must be a whole number from 1 to 64 (got '${values.replicas}')`);
    }
    const json = values.json === true;
    try {
      const report = await provision({
        stateDir: values.state ?? '.bkv',
        replicas,
        force: values.force === true,
        modulePath: values.module,
        moduleArgs: values['module-args'],
        sealScheme: sealScheme as SealScheme | 'auto' | undefined,
        onProgress: json ? undefined : (m) => console.log(`  ${m}`),
      });
      if (json) {
        console.log(JSON.stringify(report, null, 2));
      } else if (report.unchanged) {
        console.log(`bkv provision: ${report.stateDir} already holds a complete fleet of ${report.replicas.length} tokens; nothing changed.`);
      } else {
        console.log(`bkv provision: fleet of ${report.replicas.length} tokens ready in ${report.stateDir}`);
      }
      if (!json) {
        console.log(`  tokens: ${report.replicas.map((r) => r.tokenLabel).join(', ')}`);
        console.log(`  key check values: oprf-seed ${report.kcv.oprfSeed}, fleet-ake ${report.kcv.fleetAke}`);
      }
      return 0;
    } finally {
      finalizeModule();
    }
  },
};
