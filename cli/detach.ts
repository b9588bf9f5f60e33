import { Command } from "commander";
import { detach, type DetachResult } from "../src/attach.ts";
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
    .argument("<iface>", "interface ainftp was attached to")
    .option("--json", "print the result as JSON")
    .action((iface: string, o) => {
      const r = detach(iface);
      io.out(o.json ? JSON.stringify(r, null, 2) + "\n" : renderDetach(r));
    });
}
