// Child process for cloud.test.ts: uploads an endless stream to <cloud>/<name> and never finishes,
// so the parent can SIGKILL it mid-upload (a real crash, not a simulated one).
import { CloudFolder } from '../../client/cloud.ts';

const [dir, name] = process.argv.slice(2);
async function* endless() {
  for (;;) {
    yield Buffer.alloc(64 * 1024, 0x42);
    await new Promise((r) => setTimeout(r, 5));
  }
}
await new CloudFolder(dir!).put(name!, endless());
