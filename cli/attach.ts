import { Command, Option } from "commander";
import { DEFAULT_BATCH, DEFAULT_PORT, ELEMS_MTU1500, MAX_ELEMS, MAX_WORKERS } from "../src/abi.ts";
import { attach, type AttachMode, type AttachResult } from "../src/attach.ts";
import { intOption, type IO } from "./io.ts";

export function renderAttach(r: AttachResult): string {
  const lines = [
    ...r.notes.map((n) => `note: ${n}`),
    `${r.alreadyAttached ? "already attached to" : "attached to"} ${r.iface} (ifindex ${r.ifindex}) in ${r.mode} mode`,
    `  program id ${r.progId}, link id ${r.linkId}, pinned at ${r.pinDir}`,
    `  udp port ${r.port}, job ${r.config.jobId}, workers ${r.config.members}, chunks ${r.config.chunks} × ${r.config.chunkElems} elements, wake every ${r.config.batch} events`,
    `  counters: ainftp status ${r.iface}    remove: ainftp detach ${r.iface}`,
  ];
  return lines.join("\n") + "\n";
}

export function attachCommand(io: IO): Command {
  return new Command("attach")
    .summary("load the XDP aggregation program on an interface")
    .description(
      "Load the XDP program that sums gradient packets on <iface>, pin its maps and link under " +
        "/sys/fs/bpf/ainftp/<iface>/ and leave it attached after this command exits. " +
        "Attaching again updates --job, --workers and --batch in place; --port and --chunks need a detach first.",
    )
    .argument("<iface>", "network interface, e.g. eth0 (see: ip -br link)")
    .option("--port <n>", `UDP port the program consumes (default ${DEFAULT_PORT})`, intOption(1, 65535))
    .addOption(
      new Option("--mode <mode>", "XDP mode: auto tries native, then falls back to generic")
        .choices(["auto", "native", "generic"])
        .default("auto"),
    )
    .option("--job <id>", "job id that packets must carry (default 0)", intOption(0, 0xffffffff))
    .option("--workers <n>", `contributing workers, ranks 0..n-1 (1..${MAX_WORKERS}, default 2)`, intOption(1, MAX_WORKERS))
    .option("--batch <n>", `wake userspace once per n completions (default ${DEFAULT_BATCH})`, intOption(1, 1 << 20))
    .option("--chunks <n>", "chunks per round; sizes the maps (default 1024)", intOption(1, 65536))
    .option("--chunk-elems <n>", `int16 elements per packet (default ${ELEMS_MTU1500}, max ${MAX_ELEMS})`, intOption(1, MAX_ELEMS))
    .option("--json", "print the result as JSON")
    .addHelpText(
      "after",
      "\nExamples:\n  ainftp attach eth0 --workers 4 --job 7\n  ainftp attach veth0 --mode generic --port 47000\n",
    )
    .action(async (iface: string, o) => {
      const r = await attach(iface, {
        port: o.port, mode: o.mode as AttachMode, jobId: o.job, workers: o.workers, batch: o.batch,
        chunks: o.chunks, chunkElems: o.chunkElems,
      });
      io.out(o.json ? JSON.stringify({ ...r, config: { ...r.config, memberMask: "0x" + r.config.memberMask.toString(16) } }, null, 2) + "\n" : renderAttach(r));
    });
}
