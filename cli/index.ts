#!/usr/bin/env bun
// The ainftp binary's entry point.
import { run } from "./program.ts";

process.exitCode = await run(process.argv.slice(2));
