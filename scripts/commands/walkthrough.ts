// `npm start` / `bkv walkthrough`: the story of password-protected backups, end to end on real parts.
// Provisions a SoftHSM2 fleet in its own state directory, starts the five-replica Raft fleet (default
// WAN model) and ChatD as processes (the same start-up `bkv fleet up` uses), and plays the story with
// one short line per step: Alice enables a password backup and uploads; her new phone restores it with
// the password; a data center goes dark in the middle of a restore, which still succeeds with the
// attempt count right; an attacker guesses until the record locks and the backup is gone for good; Bob
// uses a 64-digit key instead. Ends with a table of what each step was expected to show and what it
// showed.
//
// No secret is printed except Bob's 64-digit key, shown once to Bob as the real command does.
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { parseFlags, UsageError, type Command } from '../cli.ts';
import { provision } from '../../softhsm/provision.ts';
import { finalizeModule } from '../../hsm-adapter/module.ts';
import { AccountStore } from '../../chatd/accounts.ts';
import { CloudFolder } from '../../client/cloud.ts';
import { createBackup, restoreBackup } from '../../client/backup.ts';
import { formatKey64Lines, generateBackupKey, parseKey64 } from '../../client/key64.ts';
import type { VaultReply } from '../../protocol/wire.ts';
import { resolveWanConfig } from '../../vault/fleet/wan.ts';
import { ServiceError, clearServeRecord, startServices, writeServeRecord, writeVaultKeys, type FleetService, type FleetStatus, type Services } from '../services.ts';
import { DEFAULT_SUITE, ksfByName, PasswordBackupError, PasswordDevice, type DeviceIdentity } from './backup-password.ts';

const MARKER = '.bkv-walkthrough';
const ALICE = '+15550100001';
const BOB = '+15550100002';

const help = `usage: bkv walkthrough [--state DIR] [--ksf NAME] [--vault fleet|single] [--wan default|none|FILE]

The story of password-protected backups on real parts (SoftHSM2 tokens, the five-replica Raft fleet
and ChatD as processes on loopback, OPAQUE, LMDB), one line per step, then a summary table. See
docs/walkthrough.md.

  --state DIR   where it runs (default .bkv/walkthrough); wiped at the start of every run, so reruns
                work. A directory bkv did not create for a walkthrough is refused, never wiped.
  --ksf NAME    the devices' key stretching: argon2id (default: the project's default, RFC 9106's second
                set, 64 MiB), scrypt (RFC 9807's parameters, ~10x faster), argon2id-rfc9106-first (2 GiB,
                ~1 min per step). The attacker's device runs the same.
  --vault KIND  fleet (default): five replicas, one per data center, agreeing by Raft, and a data
                center goes dark during a restore; single: one replica on a solo log (no fleet step)
  --wan MODEL   the fleet's WAN between data centers: default (public inter-region RTTs), none, or
                a JSON file (docs/fleet-network.md)`;

interface Row {
  step: string;
  expected: string;
  observed: string;
  ok: boolean;
  ms: number;
}

function treeDigest(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(relative(dir, p), createHash('sha256').update(readFileSync(p)).digest('hex'));
    }
  };
  walk(dir);
  return out;
}

function sameTree(a: string, b: string): { files: number; same: boolean } {
  const x = treeDigest(a);
  const y = treeDigest(b);
  return { files: x.size, same: x.size === y.size && [...x].every(([k, v]) => y.get(k) === v) };
}

/** A small, plausible chat history: a message database, a few media files. */
function makeChats(dir: string, who: string, mediaCount: number): void {
  mkdirSync(join(dir, 'media'), { recursive: true, mode: 0o700 });
  const messages = Array.from({ length: 200 }, (_, i) => ({ id: i, from: i % 2 ? who : 'friend', at: 1_700_000_000 + i * 60, text: `message ${i} ${randomBytes(8).toString('hex')}` }));
  writeFileSync(join(dir, 'messages.json'), JSON.stringify(messages), { mode: 0o600 });
  for (let i = 1; i <= mediaCount; i++) writeFileSync(join(dir, 'media', `photo-${i}.jpg`), randomBytes(60_000 + i * 10_000), { mode: 0o600 });
}

function prepareState(dir: string): void {
  if (existsSync(dir)) {
    const empty = readdirSync(dir).length === 0;
    if (!empty && !existsSync(join(dir, MARKER))) {
      throw new UsageError(`${dir} exists and was not made by a walkthrough; refusing to wipe it (choose another --state)`);
    }
    rmSync(dir, { recursive: true, force: true });
  }
  // Chat histories, tokens and logs live here: the owner's alone, like every state directory.
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, MARKER), 'made by `bkv walkthrough`; wiped at its next run\n', { mode: 0o600 });
}

const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** What an app retries after an outage: the fleet cannot serve right now, or the session died with its leader. */
function retryable(e: PasswordBackupError): boolean {
  return ['VAULT_UNAVAILABLE', 'CHATD_TIMEOUT', 'RECORD_CHANGED', 'OUTCOME_UNKNOWN'].includes(e.code) || (e.code === 'VAULT_REFUSED' && /NO_SESSION|NOT_LEADER|NO_LEADER/.test(e.message));
}

/** Retries a read through an election (a few seconds at most). */
async function retrying<T>(f: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await f();
    } catch (e) {
      if (!(e instanceof PasswordBackupError) || !retryable(e) || i >= 20) throw e;
      await sleep(250);
    }
  }
}

/** Polls the fleet's status until `ok` holds; throws after `timeoutMs`. */
async function waitFor(fleet: FleetService, ok: (s: FleetStatus) => boolean, timeoutMs: number): Promise<FleetStatus> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const s = await fleet.status().catch(() => undefined);
    if (s && ok(s)) return s;
    if (Date.now() > until) throw new ServiceError('FLEET_TIMEOUT', `the fleet did not reach the expected state within ${timeoutMs / 1000} s`);
    await sleep(150);
  }
}

export const command: Command = {
  name: 'walkthrough',
  summary: 'the story end to end on the fleet: password backup, new-phone restore, a data center dark mid-restore, lockout, 64-digit key',
  help,
  async run(argv) {
    const { values } = parseFlags(argv, { state: { type: 'string' }, ksf: { type: 'string' }, vault: { type: 'string' }, wan: { type: 'string' } });
    const kind = values.vault ?? 'fleet';
    if (kind !== 'fleet' && kind !== 'single') throw new UsageError(`--vault must be fleet or single (got '${kind.slice(0, 20)}')`);
    if (kind === 'single' && values.wan !== undefined) throw new UsageError('--wan applies to the fleet only (--vault fleet)');
    const wan = values.wan ?? 'default';
    if (kind === 'fleet') resolveWanConfig(wan); // a bad WAN file is refused before anything starts
    const stateDir = resolve(values.state ?? join('.bkv', 'walkthrough'));
    const ksf = ksfByName(values.ksf ?? 'argon2id');
    const t0 = performance.now();
    const rows: Row[] = [];
    const say = (line: string) => console.log(line);
    const timed = async <T>(f: () => Promise<T>): Promise<[T, number]> => {
      const s = performance.now();
      const v = await f();
      return [v, performance.now() - s];
    };

    prepareState(stateDir);
    say('bkv walkthrough: password-protected chat backups on real parts');
    say(`  state ${stateDir} (wiped each run); devices stretch passwords with ${ksf.name}${values.ksf && values.ksf !== 'argon2id' ? ' (chosen with --ksf, not the default)' : ' (the project default)'}`);
    say('');

    const logFile = join(stateDir, 'services.log');
    let services: Services | undefined;
    const stepNo = (n: number) => (kind === 'fleet' || n < 4 ? n : n - 1);
    try {
      // ---- set-up ----
      const [report, provMs] = await timed(async () => {
        try {
          return await provision({ stateDir });
        } finally {
          finalizeModule();
        }
      });
      say(`[setup] provisioned ${report.replicas.length} SoftHSM2 tokens (${report.replicas.map((r) => r.name).join(', ')}) and ran the key ceremony  (${secs(provMs)})`);
      const [svc, startMs] = await timed(async () => {
        const started = await startServices({ stateDir, ...(kind === 'fleet' ? { fleet: { wan, faults: true } } : {}), onLine: (who, line) => appendFileSync(logFile, `${who} | ${line}\n`, { mode: 0o600 }) });
        services = started;
        // The story starts once the fleet has a leader and every replica is up.
        const st = started.fleet ? await waitFor(started.fleet, (x) => !!x.leader && x.replicas.every((r) => r.healthy), 30_000) : undefined;
        return { started, st };
      });
      const fleet = svc.started.fleet;
      writeVaultKeys(stateDir, svc.started.vault.keys);
      writeServeRecord(stateDir, {
        version: 1,
        pid: process.pid,
        mode: fleet ? 'fleet' : 'vault',
        chatdUrl: svc.started.chatd.url,
        vaultUrl: svc.started.vault.url,
        ...(svc.st ? { replicas: svc.st.replicas.map((r) => r.name), wan } : {}),
        startedAt: new Date().toISOString(),
      });
      if (fleet && svc.st) {
        say(`[setup] the vault: ${svc.st.replicas.length} replicas (${svc.st.replicas.map((r) => r.name).join(', ')}), one per data center, worker threads on their own tokens agreeing by Raft, WAN model ${wan}; leader ${svc.st.leader}  (${secs(startMs)})`);
        say(`[setup] ChatD (pid ${svc.started.chatd.pid}, ${svc.started.chatd.url}) relays to the fleet (pid ${fleet.pid}): two processes`);
      } else {
        say(`[setup] vault (replica ${report.replicas[0]!.name}, pid ${svc.started.vault.pid}) and ChatD (pid ${svc.started.chatd.pid}, ${svc.started.chatd.url}) running as two processes  (${secs(startMs)})`);
      }
      say(`[setup] devices pin the vault key ${svc.started.vault.keys[DEFAULT_SUITE].slice(0, 16)}... from ${join(stateDir, 'vault-keys.json')}, not from ChatD`);

      const accounts = new AccountStore(stateDir);
      const alice = await accounts.create(ALICE);
      const bob = await accounts.create(BOB);
      say(`[setup] ChatD accounts for Alice (${ALICE}) and Bob (${BOB}); each device holds its account token`);
      const cloud = new CloudFolder(join(stateDir, 'cloud'));
      // onReply: the device's own view of each vault reply (opened under its session: ChatD sees none).
      const device = (token: string, user: string, onReply?: (r: VaultReply) => void | Promise<void>) => {
        const id: DeviceIdentity = { chatdUrl: svc.started.chatd.url, token, user, serverPublicKey: new Uint8Array(Buffer.from(svc.started.vault.keys[DEFAULT_SUITE], 'hex')), sessionKey: new Uint8Array(Buffer.from(svc.started.vault.keys.session, 'hex')), suite: DEFAULT_SUITE, ksf };
        return new PasswordDevice(id, { onReply });
      };
      // Alice's password: a real one a person would pick is never printed; this one is random.
      const alicePassword = `alice-${randomBytes(9).toString('base64url')}`;
      say('');

      // ---- 1. Alice enables a password backup ----
      const alicePhone = device(alice.token, ALICE);
      const [enabled, enableMs] = await timed(() => alicePhone.enable(alicePassword));
      const enableOk = enabled.state === 'registered' && enabled.attemptsLeft === enabled.limit;
      say(`[1] Alice's phone enables a password backup: new key K registered with the vault by OPAQUE; ${enabled.limit} wrong passwords will lock it  (${secs(enableMs)})`);
      const limit0 = enabled.limit;
      rows.push({ step: 'Alice enables a password backup', expected: 'registered, full attempts', observed: `${enabled.state}, ${enabled.attemptsLeft}/${enabled.limit} left`, ok: enableOk, ms: enableMs });

      // ---- 2. Alice uploads her encrypted backup ----
      const aliceChats = join(stateDir, 'devices', 'alice-phone', 'chats');
      makeChats(aliceChats, 'alice', 3);
      const [created, createMs] = await timed(async () => {
        const k = await alicePhone.recover(alicePassword);
        try {
          return await createBackup({ input: aliceChats, key: k, mode: 'password', cloud, account: 'alice' });
        } finally {
          k.fill(0);
        }
      });
      alicePhone.close();
      const kib = (n: number) => `${(n / 1024).toFixed(0)} KiB`;
      say(`[2] Alice's phone gets K back with her password and uploads ${created.files} files (${kib(created.plaintextBytes)}) encrypted: cloud/${created.object} (${kib(created.backupBytes)})  (${secs(createMs)})`);
      const afterCreate = await device(alice.token, ALICE).status();
      rows.push({
        step: 'Alice uploads her encrypted backup',
        expected: 'in the cloud; counter reset',
        observed: `${created.files} files -> ${created.object}; ${afterCreate.attemptsLeft}/${afterCreate.limit} left`,
        ok: created.files > 0 && afterCreate.attemptsLeft === afterCreate.limit,
        ms: createMs,
      });

      // ---- 3. A new phone restores with the password ----
      const newPhoneOut = join(stateDir, 'devices', 'alice-new-phone', 'chats');
      mkdirSync(join(stateDir, 'devices', 'alice-new-phone'), { recursive: true, mode: 0o700 });
      const newPhone = device(alice.token, ALICE);
      const [restored, restoreMs] = await timed(async () => {
        const k = await newPhone.recover(alicePassword);
        try {
          return await restoreBackup({ key: k, cloud, account: 'alice', out: newPhoneOut });
        } finally {
          k.fill(0);
        }
      });
      const cmp = sameTree(aliceChats, newPhoneOut);
      say(`[3] Alice's new phone (only her account token, her password and the cloud folder) restores ${restored.files} files: ${cmp.same ? 'identical to the old phone\'s' : 'DIFFERENT'}  (${secs(restoreMs)})`);
      rows.push({ step: 'New phone restores with the password', expected: 'files identical', observed: `${restored.files} files, ${cmp.same ? 'identical' : 'different'}`, ok: cmp.same && restored.files === cmp.files, ms: restoreMs });

      // ---- 4. A data center goes dark in the middle of a restore (fleet only) ----
      if (fleet) {
        const tabletOut = join(stateDir, 'devices', 'alice-tablet', 'chats');
        mkdirSync(join(stateDir, 'devices', 'alice-tablet'), { recursive: true, mode: 0o700 });
        // The moment KE2 reaches the device, the attempt it cost is committed on a majority (rule 1).
        // Then the leader's data center goes dark: its replica crashes, and with it the recovery
        // session the device was about to finish. The app tries again, as it would after any outage.
        let dark: { replica: string; term: number } | undefined;
        let ke2Tablet = 0;
        const tablet = device(alice.token, ALICE, async (reply) => {
          if (reply.t === 'KE2') {
            ke2Tablet++;
            if (!dark) {
              const st = await fleet.status();
              const leader = st.replicas.find((r) => r.name === st.leader)!;
              dark = { replica: leader.name, term: leader.term };
              await fleet.fault({ op: 'crash', replica: leader.name });
            }
          }
        });
        let firstFailure: string | undefined;
        let leftWhileDark: number | undefined;
        let tries = 0;
        const [restoredDark, darkMs] = await timed(async () => {
          for (;;) {
            tries++;
            try {
              const k = await tablet.recover(alicePassword);
              try {
                return await restoreBackup({ key: k, cloud, account: 'alice', out: tabletOut });
              } finally {
                k.fill(0);
              }
            } catch (e) {
              if (!(e instanceof PasswordBackupError) || !retryable(e) || tries >= 8) throw e;
              if (firstFailure === undefined) {
                firstFailure = e.code === 'VAULT_REFUSED' ? e.message.replace(/^.*\((\w+)\)$/, '$1') : e.code;
                // What the fleet holds for Alice now, with the leader gone: the charged attempt.
                leftWhileDark = (await retrying(() => tablet.status())).attemptsLeft;
              }
              await sleep(500);
            }
          }
        });
        const victim = dark?.replica ?? '(none)';
        const afterDark = await retrying(() => tablet.status());
        const newLeader = (await waitFor(fleet, (x) => !!x.leader && x.leader !== victim, 20_000)).leader;
        const tabletCmp = sameTree(aliceChats, tabletOut);
        say(
          `[4] A data center goes dark during a restore: as KE2 reached Alice's tablet, the leader's data center (${victim}) lost power; ` +
            `${firstFailure ? `the tablet's KE3 failed (${firstFailure}: its session died with the leader), ${leftWhileDark}/${limit0} attempts left while dark (the charged attempt survived on the majority); ` : ''}` +
            `${newLeader} leads now; the restore ${tries > 1 ? `retried and ` : ''}got ${restoredDark.files} files (${tabletCmp.same ? 'identical' : 'DIFFERENT'}), ${afterDark.attemptsLeft}/${afterDark.limit} left  (${secs(darkMs)})`,
        );
        // The dark data center comes back: it rejoins on its disk and catches up from the others.
        const [back, backMs] = await timed(async () => {
          await fleet.fault({ op: 'restart', replica: victim });
          return waitFor(fleet, (x) => {
            const r = x.replicas.find((y) => y.name === victim);
            return !!r && r.healthy && r.role === 'follower' && r.lag === 0 && !!x.leader;
          }, 30_000).then(
            (x) => x,
            () => undefined,
          );
        });
        const backRow = back?.replicas.find((r) => r.name === victim);
        say(`    ${victim} back on: ${backRow ? `rejoined as a follower, caught up to commit ${backRow.commitIndex} (lag 0)` : 'NOT caught up within 30 s'}  (${secs(backMs)})`);
        tablet.close();
        rows.push({
          step: `Leader's DC (${victim}) dark mid-restore`,
          expected: `restore succeeds; ${limit0 - 1}/${limit0} left while dark; ${limit0}/${limit0} after`,
          observed: `${tabletCmp.same ? 'restored' : 'NOT restored'} in ${tries} tr${tries === 1 ? 'y' : 'ies'} (${ke2Tablet} KE2); ${leftWhileDark ?? '-'}/${limit0} while dark; ${afterDark.attemptsLeft}/${afterDark.limit} after; ${backRow ? 'DC back, lag 0' : 'DC not back'}`,
          ok: !!dark && tabletCmp.same && restoredDark.files === tabletCmp.files && (firstFailure === undefined || leftWhileDark === limit0 - 1) && afterDark.attemptsLeft === limit0 && ke2Tablet === tries && !!backRow,
          ms: darkMs + backMs,
        });
      }

      // ---- 4. An attacker guesses until the record locks ----
      // The attacker has Alice's account token (a SIM swap, a malicious ChatD insider): everything but
      // the password. Every KE2 the vault hands out is one password guess; count them as they arrive.
      let ke2s = 0;
      const countKe2 = (reply: VaultReply) => {
        if (reply.t === 'KE2') ke2s++;
      };
      const attacker = device(alice.token, ALICE, countKe2);
      const limit = enabled.limit;
      let lockedAt = 0;
      const [, attackMs] = await timed(async () => {
        for (let guess = 1; guess <= limit + 2 && !lockedAt; guess++) {
          try {
            await attacker.recover(`guess-${guess}-${randomBytes(6).toString('hex')}`);
            say(`    guess ${guess}: ACCEPTED (this must not happen)`);
          } catch (e) {
            if (!(e instanceof PasswordBackupError)) throw e;
            if (e.code === 'WRONG_PASSWORD') say(`    guess ${String(guess).padStart(2)}: wrong, ${e.attemptsLeft} left`);
            else if (e.code === 'LOCKED') {
              lockedAt = guess;
              say(`    guess ${String(guess).padStart(2)}: LOCKED: the vault erased K`);
            } else throw e;
          }
        }
      });
      attacker.close();
      say(`[${stepNo(5)}] An attacker with Alice's token guessed until the record locked: locked at guess ${lockedAt}, ${ke2s} password evaluations (KE2) handed out, limit ${limit}  (${secs(attackMs)})`);
      rows.push({ step: 'Attacker guesses wrong passwords', expected: `locked at guess ${limit}; <= ${limit} KE2`, observed: `locked at guess ${lockedAt}; ${ke2s} KE2`, ok: lockedAt === limit && ke2s === limit, ms: attackMs });

      // ---- 5. The backup is now unrecoverable, even with the right password ----
      let ke2sAfter = 0;
      const alicePhone3 = device(alice.token, ALICE, (r) => {
        if (r.t === 'KE2') ke2sAfter++;
      });
      const [outcome, lockedMs] = await timed(async () => {
        try {
          await alicePhone3.recover(alicePassword);
          return 'RELEASED K';
        } catch (e) {
          if (e instanceof PasswordBackupError) return e.code;
          throw e;
        }
      });
      const lockedStatus = await newPhone.status();
      alicePhone3.close();
      newPhone.close();
      say(`[${stepNo(6)}] Alice, with her right password: ${outcome}; vault status ${lockedStatus.state}: the backup in the cloud can never be decrypted  (${secs(lockedMs)})`);
      rows.push({ step: 'Alice tries the right password', expected: 'LOCKED, unrecoverable', observed: `${outcome}, ${ke2sAfter} KE2, status ${lockedStatus.state}`, ok: outcome === 'LOCKED' && ke2sAfter === 0 && lockedStatus.state === 'locked', ms: lockedMs });

      // ---- 6. Bob uses a 64-digit key instead ----
      const bobChats = join(stateDir, 'devices', 'bob-phone', 'chats');
      makeChats(bobChats, 'bob', 2);
      const bobOut = join(stateDir, 'devices', 'bob-new-phone', 'chats');
      mkdirSync(join(stateDir, 'devices', 'bob-new-phone'), { recursive: true, mode: 0o700 });
      const [bobResult, bobMs] = await timed(async () => {
        const k = generateBackupKey();
        const c = await createBackup({ input: bobChats, key: k, mode: 'key64', cloud, account: 'bob' });
        const written = formatKey64Lines(k);
        k.fill(0);
        say(`[${stepNo(7)}] Bob backs up ${c.files} files with a 64-digit key instead (the vault is not involved). Shown once, to Bob:`);
        for (const l of written) say(`        ${l}`);
        // Bob's new phone: he types the key back in.
        const k2 = parseKey64(written.join('\n'));
        try {
          const r = await restoreBackup({ key: k2, cloud, account: 'bob', out: bobOut });
          return { created: c, restored: r };
        } finally {
          k2.fill(0);
        }
      });
      const bobCmp = sameTree(bobChats, bobOut);
      const bobDevice = device(bob.token, BOB);
      const bobVault = await bobDevice.status();
      bobDevice.close();
      say(`    Bob's new phone restores ${bobResult.restored.files} files with the key: ${bobCmp.same ? 'identical' : 'DIFFERENT'}; the vault holds ${bobVault.state === 'none' ? 'no record' : 'a record'} for Bob  (${secs(bobMs)})`);
      rows.push({
        step: 'Bob uses a 64-digit key',
        expected: 'restores without the vault',
        observed: `${bobResult.restored.files} files ${bobCmp.same ? 'identical' : 'different'}; vault: ${bobVault.state}`,
        ok: bobCmp.same && bobVault.state === 'none',
        ms: bobMs,
      });
    } catch (e) {
      if (services) {
        say(`walkthrough stopped: ${(e as Error).message}`);
        say(`(vault/fleet and ChatD logs: ${logFile})`);
      }
      throw e;
    } finally {
      if (services) {
        const r = await services.stop();
        clearServeRecord(stateDir);
        say('');
        say(`[done] stopped ChatD (${r.chatd.signal ?? `exit ${r.chatd.code}`}) and the ${services.fleet ? 'fleet' : 'vault'} (${r.vault.signal ?? `exit ${r.vault.code}`}); logs in ${logFile}`);
      }
    }

    // ---- summary ----
    const head = ['#', 'step', 'expected', 'observed', 'ok', 'time'];
    const body = rows.map((r, i) => [String(i + 1), r.step, r.expected, r.observed, r.ok ? 'yes' : 'NO', secs(r.ms)]);
    const widths = head.map((h, c) => Math.max(h.length, ...body.map((b) => b[c]!.length)));
    const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd();
    say('');
    say(line(head));
    say(widths.map((w) => '-'.repeat(w)).join('  '));
    for (const b of body) say(line(b));
    const failed = rows.filter((r) => !r.ok).length;
    say('');
    say(`${rows.length - failed} of ${rows.length} steps as expected, ${secs(performance.now() - t0)} in all (KSF ${ksf.name}; vault: ${kind === 'fleet' ? `five-replica Raft fleet, WAN model ${wan}` : 'single replica'}).`);
    return failed === 0 ? 0 : 1;
  },
};
