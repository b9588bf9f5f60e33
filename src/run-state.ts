// What a running node publishes for the commands that look at it (`ainftp
// sentry status`, `ainftp swarm status`): small JSON files under /run/ainftp,
// one per interface and network namespace, written whole or not at all.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { pinRoot } from "./attach.ts";

/** A file name for what the node on `iface` (in this network namespace)
 * publishes: its pin directory, flattened ("ainftp_eth0", "netns-4026532_eth0"). */
export function nodeStateName(iface: string, root = pinRoot()): string {
  return relative(join(root, ".."), join(root, iface)).replace(/[^A-Za-z0-9_.-]+/g, "_");
}

/** Writes value as JSON through a rename, so a reader never sees half a file. */
export function writeJsonAtomic(path: string, value: unknown): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(value) + "\n");
  renameSync(tmp, path);
}

/** The JSON in path, or null when it is missing or unreadable. */
export function readJsonFile<T>(path: string): T | null {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as T;
  } catch {
    return null;
  }
}
