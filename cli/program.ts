// Composes the commands; each lives in its own file and calls one library function.
import { Command, CommanderError } from "commander";
import pkg from "../package.json" with { type: "json" };
import { arenaCommand } from "./arena.ts";
import { attachCommand } from "./attach.ts";
import { benchCommand } from "./bench.ts";
import { detachCommand } from "./detach.ts";
import { keygenCommand } from "./keygen.ts";
import { processIO, reportError, type IO } from "./io.ts";
import { sentryCommand } from "./sentry.ts";
import { statusCommand } from "./status.ts";
import { swarmCommand } from "./swarm.ts";

export function buildProgram(io: IO = processIO): Command {
  const program = new Command("ainftp")
    .description(
      "Gradient all-reduce summed in the kernel's XDP path.\n\n" +
        "Start with: ainftp attach <iface> --workers N, then ainftp status <iface>.",
    )
    .version(pkg.version, "-V, --version")
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .showHelpAfterError("(add --help for usage)");
  for (const make of [attachCommand, detachCommand, statusCommand, swarmCommand, arenaCommand, sentryCommand, benchCommand, keygenCommand]) {
    // addCommand() does not copy output settings to subcommands: set them on each.
    const cmd = make(io).configureOutput({ writeOut: io.out, writeErr: io.err }).showHelpAfterError("(add --help for usage)");
    program.addCommand(cmd);
  }
  return program;
}

/** Runs the CLI; returns the exit code instead of exiting, for tests. */
export async function run(argv: string[], io: IO = processIO): Promise<number> {
  const program = buildProgram(io);
  program.exitOverride();
  for (const c of program.commands) c.exitOverride();
  try {
    await program.parseAsync(argv, { from: "user" });
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode === 0 ? 0 : 2;
    return reportError(io, e, argv.includes("--json"));
  }
}
