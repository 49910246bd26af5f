// `bkv provision`: a SoftHSM2 fleet in a state directory (idempotent; --force starts over).
import { parseFlags, UsageError, type Command } from '../cli.ts';
import { provision } from '../../softhsm/provision.ts';
import { adopt, type AdoptReplica } from '../../softhsm/adopt.ts';
import type { CeremonyMode } from '../../softhsm/ceremony.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import type { SealScheme } from '../../hsm-adapter/token.ts';

const help = `usage: bkv provision [--replicas N] [--spares N] [--state DIR] [--module PATH] [--module-args S] [--seal-scheme S] [--ceremony C] [--force] [--json]
       bkv provision --adopt [NAME=]LABEL|URI ... [--pin-file F ...] [--state DIR] [--module PATH] [--module-args S] [--ceremony C] [--json]

Creates (or completes) a SoftHSM2 fleet in DIR (default .bkv/): softhsm2.conf with its own token
directory, one token per replica labelled by data center (us-east, us-west, eu-west, ap-southeast,
sa-east, eu-central, ...), the PINs in DIR/pins.json (mode 0600), the per-token keys, and the key
ceremony that imports the same OPRF seed and fleet AKE seed into every token. DIR/fleet.json records
the fleet and the key check values of the fleet secrets.

Running it again on a complete fleet changes nothing. Nothing is destroyed without --force.

With --adopt (once per token) it takes tokens that come initialised, such as a hardware fleet's or
another software token's: it finds each by label or PKCS#11 URI, logs in with its PIN file, picks where
the token can keep bkv's data values, creates the per-token keys, runs the key ceremony and writes
fleet.json, which records each PIN file's path (bkv copies no PIN). It never initialises, re-labels
or wipes a token, and refuses a token that already holds bkv fleet secrets. NAME= names the replica
(default: the data-center names in order). --pin-file is given once per --adopt, in the same order,
or once for all of them, or not at all when each URI has pin-source=.

  --replicas N     number of replicas (default 5, or the existing fleet's size)
  --spares N       spare tokens made with the fleet (default 0), named after the next data centers:
                   they take part in the key ceremony (the fleet secrets never leave a token, so a
                   token made later could never join) and stand by for \`bkv fleet member add NAME\`;
                   only on a fresh fleet (fleet.json: standby)
  --state DIR      state directory (default .bkv in the working directory)
  --module PATH    PKCS#11 module (default BKV_PKCS11_MODULE or ${'/usr/lib/softhsm/libsofthsm2.so'})
  --module-args S  string handed to C_Initialize for modules that need one (NSS softoken:
                   configdir=...); recorded in fleet.json, so serve, fleet up and doctor use it
  --seal-scheme S  auto (default) | aes-256-gcm | aes-256-cbc-hmac-sha256 (recorded in fleet.json)
  --ceremony C     auto (default) | token | host: token generates the OPRF seed in the first token and
                   moves it token to token under ECDH-derived key wrap (no host copy); auto falls back
                   to host (drawn on the host, imported, wiped) where a token lacks the mechanisms
  --adopt SPEC     adopt an initialised token: [NAME=]LABEL or [NAME=]pkcs11:... (repeat per token)
  --pin-file F     the user PIN of the adopted token(s), mode 0600 (see above)
  --force          destroy an existing fleet in DIR and provision a new one
  --json           print the report as JSON`;

export const command: Command = {
  name: 'provision',
  summary: 'create the SoftHSM2 token fleet and run the key ceremony (idempotent)',
  help,
  async run(argv) {
    const { values } = parseFlags(argv, {
      replicas: { type: 'string' },
      spares: { type: 'string' },
      state: { type: 'string' },
      module: { type: 'string' },
      'module-args': { type: 'string' },
      force: { type: 'boolean' },
      json: { type: 'boolean' },
      'seal-scheme': { type: 'string' },
      adopt: { type: 'string', multiple: true },
      ceremony: { type: 'string' },
      'pin-file': { type: 'string', multiple: true },
    });
    const ceremony = values.ceremony;
    if (ceremony !== undefined && !['auto', 'token', 'host'].includes(ceremony)) throw new UsageError('--ceremony must be auto, token or host');
    if (values.adopt?.length && values.spares !== undefined) throw new UsageError('--spares does not go with --adopt (adopt the spare tokens too; every adopted token is a member)');
    if (values.adopt?.length) return adoptCommand(values);
    if (values['pin-file']?.length) throw new UsageError('--pin-file goes with --adopt (provisioned SoftHSM2 tokens have their PINs in DIR/pins.json)');
    const sealScheme = values['seal-scheme'];
    if (sealScheme !== undefined && !['auto', 'aes-256-gcm', 'aes-256-cbc-hmac-sha256'].includes(sealScheme)) {
      throw new UsageError('--seal-scheme must be auto, aes-256-gcm or aes-256-cbc-hmac-sha256');
    }
    let replicas: number | undefined;
    if (values.replicas !== undefined) {
      replicas = Number(values.replicas);
      if (!/^\d+$/.test(values.replicas) || replicas < 1 || replicas > 64) throw new UsageError(`--replicas must be a whole number from 1 to 64 (got '${values.replicas}')`);
    }
    let spares: number | undefined;
    if (values.spares !== undefined) {
      spares = Number(values.spares);
      if (!/^\d+$/.test(values.spares) || spares > 63) throw new UsageError(`--spares must be a whole number from 0 to 63 (got '${values.spares.slice(0, 20)}')`);
    }
    const json = values.json === true;
    try {
      const report = await provision({
        stateDir: values.state ?? '.bkv',
        replicas,
        spares,
        force: values.force === true,
        modulePath: values.module,
        moduleArgs: values['module-args'],
        sealScheme: sealScheme as SealScheme | 'auto' | undefined,
        ceremony: ceremony as CeremonyMode | undefined,
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
        if (report.standby) console.log(`  standby (for \`bkv fleet member add\`): ${report.standby.map((r) => `${r.tokenLabel} (${r.standby})`).join(', ')}`);
        console.log(`  key check values: oprf-seed ${report.kcv.oprfSeed}, fleet-ake ${report.kcv.fleetAke}`);
      }
      return 0;
    } finally {
      finalizeModule();
    }
  },
};

/** [NAME=]SPEC: a leading replica name, unless the whole thing is a URI or a plain label. */
export function parseAdoptSpec(spec: string): { name?: string; token: string } {
  const m = /^([a-z0-9][a-z0-9-]*)=(.+)$/.exec(spec);
  if (m && !spec.startsWith('pkcs11:')) return { name: m[1], token: m[2]! };
  return { token: spec };
}

async function adoptCommand(values: { ceremony?: string; adopt?: string[]; 'pin-file'?: string[]; state?: string; module?: string; 'module-args'?: string; json?: boolean; replicas?: string; force?: boolean; 'seal-scheme'?: string }): Promise<number> {
  if (values.replicas !== undefined || values.force || values['seal-scheme'] !== undefined) {
    throw new UsageError('--replicas, --force and --seal-scheme do not go with --adopt (one --adopt per token; the seal scheme follows the token)');
  }
  const specs = values.adopt!.map(parseAdoptSpec);
  const pinFiles = values['pin-file'] ?? [];
  if (pinFiles.length > 1 && pinFiles.length !== specs.length) {
    throw new UsageError(`give --pin-file once per --adopt (${specs.length}), once for all, or not at all (got ${pinFiles.length})`);
  }
  const replicas: AdoptReplica[] = specs.map((s, i) => ({ ...s, ...(pinFiles.length ? { pinFile: pinFiles[pinFiles.length === 1 ? 0 : i]! } : {}) }));
  const json = values.json === true;
  try {
    const report = await adopt({
      stateDir: values.state ?? '.bkv', modulePath: values.module, moduleArgs: values['module-args'], replicas,
      ceremony: values.ceremony as CeremonyMode | undefined,
      onProgress: json ? undefined : (m) => console.log(`  ${m}`),
    });
    if (json) console.log(JSON.stringify(report, null, 2));
    else {
      console.log(report.unchanged
        ? `bkv provision: ${report.stateDir} already holds these ${report.replicas.length} adopted tokens; nothing changed.`
        : `bkv provision: adopted ${report.replicas.length} tokens into ${report.stateDir}`);
      console.log(`  tokens: ${report.replicas.map((r) => `${r.name}=${r.tokenLabel}`).join(', ')}`);
      console.log(`  key check values: oprf-seed ${report.kcv.oprfSeed}, fleet-ake ${report.kcv.fleetAke}`);
    }
    return 0;
  } finally {
    finalizeModule();
  }
}
