// The straggler row's harness hook: delays everything one host sends by a
// fixed time. The host's bridge port is taken out of the bridge and joined to
// it again through a delay line (src/bench/delay-line.ts, run as `ainftp
// bench node delay-line` in the bridge's namespace) and a new veth pair:
//
//   host eth0 ⇄ p<k> ⇄ [delay line: p<k> → +delay → dl<k>a; dl<k>a → p<k> at once] ⇄ dl<k>a ⇄ dl<k>b ⇄ br0
//
// remove() puts the port back. The row itself waits for the swarm's
// straggler handling (issue 6): with none, every round waits for the host.
import { join } from "node:path";
import { readFileSync } from "node:fs";
import type { Lab } from "../lab/netns.ts";
import { AinftpError } from "../errors.ts";
import type { DelayLineStats } from "./delay-line.ts";

export interface LinkDelay {
  readonly port: string;
  readonly delayMs: number;
  /** The line's counters (null until it wrote them). */
  stats(): DelayLineStats | null;
  /** Stops the line and puts the host's port back into the bridge. Idempotent. */
  remove(): void;
}

function ip(bridge: string, args: string[]): void {
  const r = Bun.spawnSync(["ip", "-n", bridge, ...args], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new AinftpError("delay link", `ip ${args.join(" ")}: ${r.stderr.toString().trim()}`);
}

/**
 * Delays what host `index` of a bridge lab sends by `delayMs` (its port is
 * p<index> in namespace `bridge`). `self` starts ainftp (the bench's
 * selfCommand()).
 */
export async function delayHostLink(lab: Lab, bridge: string, index: number, delayMs: number, self: string[]): Promise<LinkDelay> {
  const port = `p${index}`;
  const [a, b] = [`dl${index}a`, `dl${index}b`];
  const mtu = String(JSON.parse(Bun.spawnSync(["ip", "-n", bridge, "-j", "link", "show", port]).stdout.toString())[0].mtu);
  const statsFile = join(lab.tmp, `delay-${index}.json`);
  ip(bridge, ["link", "add", a, "mtu", mtu, "type", "veth", "peer", "name", b, "mtu", mtu]);
  let line: Bun.Subprocess<"ignore", "pipe", "pipe"> | null = null;
  let removed = false;
  const remove = () => {
    if (removed) return;
    removed = true;
    line?.kill(9);
    Bun.spawnSync(["ip", "-n", bridge, "link", "del", a]);
    Bun.spawnSync(["ip", "-n", bridge, "link", "set", port, "master", "br0"]);
  };
  try {
    ip(bridge, ["link", "set", b, "master", "br0"]);
    for (const d of [a, b]) ip(bridge, ["link", "set", d, "up"]);
    ip(bridge, ["link", "set", port, "nomaster"]);
    line = Bun.spawn(
      ["nsenter", `--net=/run/netns/${bridge}`, ...self, "bench", "node", "delay-line", "--",
        "--from", port, "--to", a, "--delay", String(delayMs), "--stats", statsFile, "--parent", String(process.pid)],
      { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
    );
    const reader = line.stdout.getReader();
    const first = await Promise.race([reader.read(), Bun.sleep(15_000).then(() => ({ value: undefined, done: true }))]);
    reader.releaseLock();
    if (!first.value || !new TextDecoder().decode(first.value).startsWith("ready")) {
      line.kill(9);
      throw new AinftpError("delay link", `the delay line did not start: ${(await new Response(line.stderr).text()).trim()}`);
    }
  } catch (e) {
    remove();
    throw e;
  }
  return {
    port, delayMs,
    stats: () => {
      try {
        return JSON.parse(readFileSync(statsFile, "utf8")) as DelayLineStats;
      } catch {
        return null;
      }
    },
    remove,
  };
}
