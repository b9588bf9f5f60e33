import { Command } from "commander";
import { JOB_KEY_ENV, generateKey, writeKeyFile } from "../src/jobkey.ts";
import type { IO } from "./io.ts";

export function keygenCommand(io: IO): Command {
  return new Command("keygen")
    .summary("make a 128-bit job key (control packets are authenticated under it)")
    .description(
      "Print a new random job key (32 hex digits), or write it to --out (mode 0600, never overwriting). " +
        `Give the same key to every member with --key-file or ${JOB_KEY_ENV}; a host without it cannot change ` +
        "any membership or control state of the job.",
    )
    .option("--out <file>", "write the key to this file instead of stdout")
    .option("--json", "print the result as JSON")
    .action((o: { out?: string; json?: boolean }) => {
      if (o.out) {
        writeKeyFile(o.out);
        io.out(o.json ? JSON.stringify({ file: o.out }) + "\n" : `wrote a new job key to ${o.out}\n`);
      } else {
        const key = generateKey();
        io.out(o.json ? JSON.stringify({ key }) + "\n" : key + "\n");
      }
    });
}
