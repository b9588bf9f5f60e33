import { Command } from "commander";
import { detach, detachStale, type DetachResult } from "../src/attach.ts";
import { AinftpError } from "../src/errors.ts";
import type { IO } from "./io.ts";

export function renderDetach(r: DetachResult): string {
  if (r.detached) return `detached from ${r.iface} (program id ${r.progId}); removed ${r.pinDir}\n`;
  if (r.removedPins) return `removed stale pins at ${r.pinDir} (no program was attached)\n`;
  return `ainftp is not attached to ${r.iface}; nothing to do\n`;
}

export function detachCommand(io: IO): Command {
  return new Command("detach")
    .summary("remove the XDP program and its pins from an interface")
    .description(
      "Remove ainftp from <iface>: unpin the link (which detaches the program) and the maps. " +
        "Also cleans pins left behind by a crash or by an interface that no longer exists.",
    )
    .argument("[iface]", "interface ainftp was attached to")
    .option("--stale", "instead: remove every stale set of pins in this namespace (link gone, or its swarm dead), e.g. from a SLURM Epilog")
    .option("--json", "print the result as JSON")
    .action(async (iface: string | undefined, o) => {
      if (o.stale) {
        if (iface !== undefined) throw new AinftpError("detach", "--stale takes no interface", { hint: "ainftp detach --stale, or ainftp detach IFACE" });
        const removed = await detachStale();
        io.out(o.json ? JSON.stringify(removed, null, 2) + "\n" : removed.map((x) => `removed stale pins at ${x.pinDir} (${x.why})\n`).join("") || "no stale pins\n");
        return;
      }
      if (iface === undefined) throw new AinftpError("detach", "no interface given", { hint: "ainftp detach IFACE (see ainftp status), or ainftp detach --stale" });
      const r = detach(iface);
      io.out(o.json ? JSON.stringify(r, null, 2) + "\n" : renderDetach(r));
    });
}
