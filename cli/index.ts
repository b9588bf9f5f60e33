#!/usr/bin/env bun
// The ainftp binary's entry point.
import { run } from "./program.ts";

// run() returns every command's exit code (commands end with `throw new
// ExitCode(n)`); keep a code something set on the way if run() says 0.
const code = await run(process.argv.slice(2));
process.exitCode = code || Number(process.exitCode ?? 0);
