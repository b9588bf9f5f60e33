import Table from "cli-table3";
import { Command, InvalidArgumentError } from "commander";
import { CFG_CHECK_SOURCE, CFG_RESULTS_TO_XSK, COUNTERS, COUNTER_HELP, dropsOf, type Counters } from "../src/abi.ts";
import { status, type IfaceStatus } from "../src/attach.ts";
import { intOption, type IO } from "./io.ts";

export function secondsOption(value: string): number {
  const n = Number(value);
  if (!/^\d*\.?\d+$/.test(value) || !(n > 0) || n > 3600) throw new InvalidArgumentError("Give seconds > 0, e.g. --watch 2.");
  return n;
}

/** cli-table3 borders without a rule between rows. */
export const COMPACT = { mid: "", "left-mid": "", "mid-mid": "", "right-mid": "" };

/** "none", or "N (reason n, …)": what the program dropped and why. */
export function renderDrops(c: Counters): string {
  const d = Object.entries(dropsOf(c));
  return d.length ? `${d.reduce((a, [, n]) => a + n, 0)} (${d.map(([k, n]) => `${k} ${n}`).join(", ")})` : "none";
}

function statusJSON(s: IfaceStatus) {
  return {
    ...s,
    // the non-zero drop reasons (also in counters), for a quick look
    drops: s.counters ? dropsOf(s.counters) : null,
    config: s.config
      ? {
          ...s.config, memberMask: "0x" + s.config.memberMask.toString(16),
          // the slots of each bank's round wait for these ranks (0x0: the member mask)
          bankMask: (s.config.bankMask ?? [0n, 0n]).map((m) => "0x" + m.toString(16)),
        }
      : null,
  };
}

/** The status of each interface as text: a summary line and a counter table.
 * With `prev` and `dt` (seconds) a per-second rate column is added. */
export function renderStatus(list: IfaceStatus[], prev?: Map<string, Counters>, dt = 1): string {
  if (list.length === 0) return "ainftp is not attached to any interface in this network namespace\n";
  let text = "";
  for (const s of list) {
    if (s.stale) {
      text += `${s.iface}: stale pins at ${s.pinDir} (the link is gone); clean them with: ainftp detach ${s.iface}\n`;
      continue;
    }
    const c = s.config!;
    text += `${s.iface} (ifindex ${s.ifindex}): ${s.mode} mode, program id ${s.progId}, link id ${s.linkId}\n`;
    text += `  port ${s.port}  job ${c.jobId}  workers ${c.members} (mask 0x${c.memberMask.toString(16)})  round window ${c.roundBase}..${c.roundBase + 1}\n`;
    text += `  chunks ${c.chunks} (maps sized for ${s.chunks}) × ${c.chunkElems} elements  batch ${c.batch}  owned ${c.ownedChunks}\n`;
    const flags = c.flags ?? 0;
    text += `  results: ${flags & CFG_RESULTS_TO_XSK ? "redirected to an AF_XDP socket (a node runs with --rx xsk; copy or zero-copy mode is in its report)" : "written into the mmapped results map"}` +
      `  source check: ${flags & CFG_CHECK_SOURCE ? "on" : "off"}\n`;
    text += `  dropped: ${renderDrops(s.counters!)}\n`;
    const before = prev?.get(s.iface);
    const head = before ? ["counter", "total", "per s", "meaning"] : ["counter", "total", "meaning"];
    const t = new Table({ head, style: { head: [], border: [] }, chars: COMPACT });
    for (const name of COUNTERS) {
      const v = s.counters![name];
      const row: (string | number)[] = [name, v];
      if (before) row.push(Math.round((v - before[name]) / dt));
      row.push(COUNTER_HELP[name]);
      t.push(row);
    }
    text += t.toString() + "\n";
  }
  return text;
}

export function statusCommand(io: IO): Command {
  return new Command("status")
    .summary("show attach mode, program, config and every counter")
    .description("Show where ainftp is attached in this network namespace, its configuration and its counters.")
    .argument("[iface]", "one interface (default: every attached interface)")
    .option("--json", "print JSON with stable field names (counters keyed as in the table)")
    .option("--watch [seconds]", "refresh every N seconds (default 1) with per-second rates; Ctrl-C stops", secondsOption)
    .option("--count <n>", "with --watch: stop after n refreshes", intOption(1))
    .action(async (iface: string | undefined, o) => {
      const once = () => status(iface);
      if (!o.watch) {
        const list = once();
        io.out(o.json ? JSON.stringify(list.map(statusJSON), null, 2) + "\n" : renderStatus(list));
        return;
      }
      const every = o.watch === true ? 1 : (o.watch as number);
      let prev: Map<string, Counters> | undefined;
      let last = performance.now();
      for (let i = 0; o.count === undefined || i < o.count; i++) {
        const list = once();
        const now = performance.now();
        if (o.json) io.out(JSON.stringify({ t: Date.now(), interfaces: list.map(statusJSON) }) + "\n");
        else io.out((io.tty ? "\x1b[H\x1b[2J" : "") + renderStatus(list, prev, (now - last) / 1000));
        prev = new Map(list.filter((s) => s.counters).map((s) => [s.iface, s.counters!]));
        last = now;
        if (o.count !== undefined && i + 1 >= o.count) break;
        await Bun.sleep(every * 1000);
      }
    });
}
