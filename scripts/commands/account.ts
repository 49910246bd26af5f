// `bkv account create|list|revoke`: the device accounts ChatD authenticates. The token is printed once,
// on stdout, by `create`; the store keeps only its SHA-256.
import { parseFlags, UsageError, type Command } from '../cli.ts';
import { AccountStore, accountTag } from '../../chatd/accounts.ts';
import { openSecretOut } from '../secret-out.ts';

const help = `usage: bkv account create --phone E164 [--state DIR] [--out F] [--json]
       bkv account list [--state DIR] [--json]
       bkv account revoke --phone E164 [--state DIR] [--json]

Device accounts for ChatD, kept in DIR/chatd/accounts.json (DIR defaults to .bkv).

  create   issue a token for a phone number (e.g. +15551234567). The token is printed once on stdout
           (only the token; the rest goes to stderr), or with --out F written to a new file F, mode
           0600 (an existing F is refused before the account is made). Only its SHA-256 is stored. A
           phone number has at most one active token: revoke it first to issue a new one.
  list     phone, status, creation time and token-hash tag (what ChatD logs) of every account.
  revoke   the token stops working at ChatD's next request, even while ChatD is running.

  --json   the result as one JSON object on stdout (create: {"ok", "phone", "tag", and "token" or
           "tokenFile"}); a failure as {"error": {"code", "message", "hint"}} on stderr`;

async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  switch (sub) {
    case 'create': {
      const { values } = parseFlags(rest, { phone: { type: 'string' }, state: { type: 'string' }, out: { type: 'string' }, json: { type: 'boolean' } });
      if (!values.phone) throw new UsageError('account create needs --phone');
      const store = new AccountStore(values.state ?? '.bkv');
      // Before the account exists: a token that could not be saved would be one nobody has.
      const out = values.out !== undefined ? openSecretOut(values.out, '--out') : undefined;
      let r;
      try {
        r = await store.create(values.phone);
      } catch (e) {
        out?.discard();
        throw e;
      }
      if (out) {
        out.commit(`${r.token}\n`);
        console.error(`bkv: account created for ${r.phone} (tag ${r.tag}); its token is in ${out.path} (mode 0600) and shown nowhere else`);
        if (values.json) console.log(JSON.stringify({ ok: true, phone: r.phone, tag: r.tag, tokenFile: out.path }));
      } else if (values.json) {
        // The token is the result asked for, shown this once, as without --json.
        console.log(JSON.stringify({ ok: true, phone: r.phone, tag: r.tag, token: r.token }));
        console.error(`bkv: account created for ${r.phone} (tag ${r.tag}); the token ("token" above) is shown only this once`);
      } else {
        console.log(r.token);
        console.error(`bkv: account created for ${r.phone} (tag ${r.tag}); the token above is shown only this once`);
      }
      return 0;
    }
    case 'list': {
      const { values } = parseFlags(rest, { state: { type: 'string' }, json: { type: 'boolean' } });
      const accounts = await new AccountStore(values.state ?? '.bkv').list();
      const rows = accounts.map((a) => ({
        phone: a.phone,
        status: a.revoked ? 'revoked' : 'active',
        created: a.created,
        ...(a.revoked ? { revoked: a.revoked } : {}),
        tag: accountTag(a.tokenSha256),
      }));
      if (values.json) {
        console.log(JSON.stringify(rows, null, 2));
      } else if (rows.length === 0) {
        console.log('no accounts');
      } else {
        for (const r of rows) console.log(`${r.phone.padEnd(17)} ${r.status.padEnd(8)} ${r.created}  ${r.tag}`);
      }
      return 0;
    }
    case 'revoke': {
      const { values } = parseFlags(rest, { phone: { type: 'string' }, state: { type: 'string' }, json: { type: 'boolean' } });
      if (!values.phone) throw new UsageError('account revoke needs --phone');
      await new AccountStore(values.state ?? '.bkv').revoke(values.phone);
      console.log(values.json ? JSON.stringify({ ok: true, phone: values.phone, revoked: true }) : `revoked ${values.phone}`);
      return 0;
    }
    case undefined:
      throw new UsageError('account needs a subcommand: create, list or revoke');
    default:
      throw new UsageError(`unknown account subcommand '${sub}'`);
  }
}

export const command: Command = {
  name: 'account',
  summary: 'create, list and revoke the device accounts ChatD authenticates',
  help,
  run,
};
