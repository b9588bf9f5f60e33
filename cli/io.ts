// Where commands write, so tests can capture output, and how errors are shown.
import { InvalidArgumentError } from "commander";
import { AinftpError } from "../src/errors.ts";

export interface IO {
  out(text: string): void;
  err(text: string): void;
  /** Whether stdout is a terminal (progress, colors, --watch redraws). */
  tty: boolean;
}

export const processIO: IO = {
  out: (t) => process.stdout.write(t),
  err: (t) => process.stderr.write(t),
  tty: Boolean(process.stdout.isTTY),
};

/** Thrown by actions to end with an exit code after output was written. */
export class ExitCode extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

/** Prints an error as a user should see it (or as JSON) and returns the exit code. */
export function reportError(io: IO, e: unknown, json: boolean): number {
  if (e instanceof ExitCode) return e.code;
  if (e instanceof AinftpError) {
    if (json) io.out(JSON.stringify(e.toJSON(), null, 2) + "\n");
    else {
      io.err(`ainftp: ${e.message}\n`);
      if (e.hint) io.err(`  hint: ${e.hint}\n`);
      if (e.detail) io.err(`  --- ${e.detailTitle} ---\n${e.detail.replace(/^/gm, "  ")}\n`);
    }
    return 1;
  }
  const msg = e instanceof Error ? (e.stack ?? e.message) : String(e);
  if (json) io.out(JSON.stringify({ error: String(e instanceof Error ? e.message : e) }) + "\n");
  else io.err(`ainftp: internal error: ${msg}\n`);
  return 70;
}

/** Parses an integer option in lo..hi; the error names the range (commander
 * prefixes the option and value and exits with a usage error). */
export function floatOption(lo: number, hi: number) {
  return (value: string): number => {
    const n = /^-?\d+(\.\d+)?$/.test(value.trim()) ? Number(value) : NaN;
    if (!Number.isFinite(n) || n < lo || n > hi) throw new InvalidArgumentError(`Give a number in ${lo}..${hi}.`);
    return n;
  };
}

export function intOption(lo = 0, hi = Number.MAX_SAFE_INTEGER) {
  return (value: string): number => {
    const n = /^(0x[0-9a-f]+|\d+)$/i.test(value.trim()) ? Number(value) : NaN;
    if (!Number.isSafeInteger(n) || n < lo || n > hi)
      throw new InvalidArgumentError(`Give an integer in ${lo}..${hi}.`);
    return n;
  };
}
