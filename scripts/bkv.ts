// The `bkv` command line: a table of subcommands, each loaded only when used so that `bkv --help`
// and light commands never load PKCS#11, LMDB or the crypto backends.
import { reportError, type Command } from './cli.ts';

// Listed here in help order; each lives in commands/NAME.ts and exports `command`.
const commandNames = ['provision', 'doctor', 'backup', 'account', 'serve', 'fleet', 'chaos', 'walkthrough'];

async function load(name: string): Promise<Command | undefined> {
  if (!commandNames.includes(name)) return undefined;
  try {
    return ((await import(`./commands/${name}.ts`)) as { command: Command }).command;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND' && String(e).includes(`commands/${name}.ts`)) {
      return undefined;
    }
    throw e;
  }
}

async function usage(): Promise<string> {
  const lines = ['usage: bkv COMMAND [options]', '', 'commands:'];
  for (const name of commandNames) {
    const c = await load(name);
    if (c) lines.push(`  ${name.padEnd(12)} ${c.summary}`);
  }
  lines.push('', 'Run `bkv COMMAND --help` for a command\'s options.');
  return lines.join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(await usage());
    return name ? 0 : 2;
  }
  let command: Command | undefined;
  try {
    command = await load(name);
  } catch (e) {
    return reportError(e);
  }
  if (!command) {
    console.error(`bkv: unknown command '${name}'\n\n${await usage()}`);
    return 2;
  }
  if (rest[0] === '--help' || rest[0] === '-h') {
    console.log(command.help);
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    // With --json anywhere on the line, the failure is JSON on stderr too (code, message, hint).
    return reportError(e, rest.includes('--json'));
  }
}
