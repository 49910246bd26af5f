// `bkv doctor`: health of the provisioned fleet, or of any one PKCS#11 token.
import { readFileSync } from 'node:fs';
import { parseFlags, UsageError, type Command } from '../cli.ts';
import { doctorFleet, doctorToken, type DoctorReport } from '../../softhsm/doctor.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import { BkvError } from '../../protocol/errors.ts';
import type { SealScheme } from '../../hsm-adapter/token.ts';
import { loadState } from '../../softhsm/state.ts';
import { checkReplicaDisks, diskProblem, type DiskCheck } from '../disk-doctor.ts';

const help = `usage: bkv doctor [--state DIR] [--json] [--seal-scheme S]
       bkv doctor --token LABEL|URI [--module PATH] [--pin-file F] [--module-args STRING] [--json]

Checks the PKCS#11 module, each replica token's mechanisms and the choices bkv makes from them (seal
scheme, ECDSA, where the anchor, vote and sealed AKE seed live and what that costs), a self-test per
token (seal/open, HMAC, sign/verify, keys that refuse to leave the token, each key's usage flags
against what bkv needs), how the key ceremony ran, that the fleet secrets' key check values agree
across tokens, each replica's disk against its token (every sealed entry and snapshot opens, the
entries chain to the end, the token's anchor is on that chain: TAMPERED or ROLLBACK_DETECTED is an
integrity failure, red), and which OPAQUE group backend this build runs (native, or the libsodium
WebAssembly fallback with the reason: a warning, not red). Exit 0 when green, 1 when red.

With --token it checks any single token (a hardware one too): only the bkv objects that exist are
tested; missing ones are listed.

  --state DIR          state directory of a provisioned fleet (default .bkv)
  --token LABEL|URI    one token, by label or PKCS#11 URI (pkcs11:token=NAME[;serial=...])
  --module PATH        PKCS#11 module (default: the URI's module-path, BKV_PKCS11_MODULE, SoftHSM2)
  --pin-file F         file holding the user PIN (else BKV_PIN, else the URI's pin-source)
  --module-args S      string handed to C_Initialize (pReserved) for modules that take one
  --seal-scheme S      auto | aes-256-gcm | aes-256-cbc-hmac-sha256 (default: as provisioned / auto)
  --json               print the report as JSON`;

const schemes = ['auto', 'aes-256-gcm', 'aes-256-cbc-hmac-sha256'];

function readPin(path: string): string {
  try {
    return readFileSync(path, 'utf8').replace(/\r?\n$/, '');
  } catch (e) {
    throw new BkvError('PIN_FILE_UNREADABLE', `cannot read PIN file ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

function render(r: DoctorReport & { disks?: DiskCheck[] }): string {
  const out: string[] = [];
  out.push(r.mode === 'fleet' ? `bkv doctor: fleet in ${r.stateDir}` : `bkv doctor: single token`);
  const lib = r.library;
  out.push(`module   ${r.modulePath}${lib ? `  (${lib.description} ${lib.version} by ${lib.manufacturer}, Cryptoki ${lib.cryptokiVersion})` : ''}`);
  const ob = r.opaqueBackend;
  out.push(
    `opaque   ${ob.backend} ristretto255 backend` +
      (ob.native.loaded ? ` (system libsodium ${ob.native.sodiumVersion}, ${ob.native.path})` : ` (native unavailable: ${ob.native.reason})`),
  );
  for (const t of r.tokens) {
    out.push('');
    if (!t.opened) {
      out.push(`token ${t.tokenLabel}: cannot open: ${t.error?.message} [${t.error?.code}]`);
      continue;
    }
    out.push(`token ${t.tokenLabel}${t.name && t.name !== t.tokenLabel ? ` (${t.name})` : ''}  ${t.manufacturer} ${t.model}, serial ${t.serial}, ${t.mechanismCount} mechanisms`);
    out.push(`  seal     ${t.sealScheme} (${t.sealSchemeReason})`);
    out.push(`  ecdsa    ${t.ecdsa}`);
    if (t.dataStore) out.push(`  data     ${t.dataStore.store ?? 'NONE'} (${t.dataStore.reason})${t.dataStore.cost && t.dataStore.store !== 'data-object' ? `; cost: ${t.dataStore.cost}` : ''}`);
    const needed = Object.entries(t.neededMechanisms ?? {});
    out.push(`  needs    ${needed.map(([m, ok]) => `${m}${ok ? '' : ' (MISSING)'}`).join(', ')}`);
    for (const c of t.checks) out.push(`  ${c.status.padEnd(7)}  ${c.name}${c.detail ? `: ${c.detail}` : ''}`);
  }
  if (r.fleetChecks.length) {
    out.push('', 'fleet');
    for (const c of r.fleetChecks) out.push(`  ${c.status.padEnd(7)}  ${c.name}${c.detail ? `: ${c.detail}` : ''}`);
  }
  if (r.disks?.length) {
    out.push('', 'disks');
    for (const d of r.disks) out.push(`  ${d.status.padEnd(7)}  ${d.replica}: ${d.detail}`);
  }
  out.push('');
  if (r.ok) {
    const missing = r.tokens.flatMap((t) => t.checks.filter((c) => c.status === 'missing').map((c) => c.name));
    out.push(`verdict: GREEN, ${r.tokens.length} token${r.tokens.length === 1 ? '' : 's'} healthy` + (missing.length ? ` (not provisioned for bkv: missing ${missing.join(', ')})` : ''));
  } else {
    out.push(`verdict: RED`);
    for (const p of r.problems) out.push(`  - ${p}`);
  }
  for (const w of r.warnings) out.push(`warning: ${w}`);
  return out.join('\n');
}

export const command: Command = {
  name: 'doctor',
  summary: 'check the module, the tokens and the fleet secrets; exit 0 green, 1 red',
  help,
  async run(argv) {
    const { values } = parseFlags(argv, {
      state: { type: 'string' },
      json: { type: 'boolean' },
      token: { type: 'string' },
      module: { type: 'string' },
      'pin-file': { type: 'string' },
      'module-args': { type: 'string' },
      'seal-scheme': { type: 'string' },
    });
    const scheme = values['seal-scheme'];
    if (scheme !== undefined && !schemes.includes(scheme)) throw new UsageError(`--seal-scheme must be one of ${schemes.join(', ')}`);
    const tokenMode = values.token !== undefined;
    if (!tokenMode && (values.module || values['pin-file'] || values['module-args'])) {
      throw new UsageError('--module, --pin-file and --module-args go with --token (a fleet records its own)');
    }
    if (tokenMode && values.state) throw new UsageError('give either --state (a fleet) or --token (one token), not both');
    try {
      let report: DoctorReport;
      if (tokenMode) {
        const pin = values['pin-file'] !== undefined ? readPin(values['pin-file']) : process.env.BKV_PIN;
        report = doctorToken({
          ...(values.module !== undefined ? { modulePath: values.module } : {}),
          token: values.token!,
          pin,
          moduleArgs: values['module-args'],
          sealScheme: scheme as SealScheme | 'auto' | undefined,
        });
      } else {
        report = doctorFleet({ stateDir: values.state ?? '.bkv', sealScheme: scheme as SealScheme | 'auto' | undefined });
        // The disks too, against tokens that opened: seals, chain, anchor. A failure is red.
        if (report.tokens.every((t) => t.opened)) {
          const disks = await checkReplicaDisks(loadState(values.state ?? '.bkv'));
          const bad = disks.filter((d) => d.status === 'fail');
          report = { ...report, ok: report.ok && bad.length === 0, problems: [...report.problems, ...bad.map(diskProblem)], disks } as DoctorReport;
        }
      }
      console.log(values.json ? JSON.stringify(report, null, 2) : render(report));
      return report.ok ? 0 : 1;
    } finally {
      finalizeModule();
    }
  },
};
