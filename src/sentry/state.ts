// What a running node's sentry shows to `ainftp sentry status`, and how an
// operator re-admits a quarantined worker. The kernel's per-rank counts are
// in the pinned sentry_workers map; strikes, quarantine and gates live in the
// node's process, which publishes them as a JSON file next to its pins'
// name under /run/ainftp/sentry/ (one per interface and network namespace)
// and picks up re-admissions from a file beside it.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { nodeStateName, readJsonFile, writeJsonAtomic } from "../run-state.ts";
import type { KeeperStatus } from "./keeper.ts";

export const STATE_DIR = "/run/ainftp/sentry";

export interface PublishedState extends KeeperStatus {
  iface: string;
  job: number;
  rank: number;
  peers: string[];
  pid: number;
  /** ms since the epoch when written. */
  updated: number;
}

export function statePath(iface: string, root?: string): string {
  return join(STATE_DIR, `${nodeStateName(iface, root)}.json`);
}

export function readmitPath(iface: string, root?: string): string {
  return join(STATE_DIR, `${nodeStateName(iface, root)}.readmit`);
}

/** Writes the state atomically (readers never see half a file). */
export function publishState(path: string, s: PublishedState): void {
  writeJsonAtomic(path, s);
}

export function readState(path: string): PublishedState | null {
  return readJsonFile<PublishedState>(path);
}

export function removeState(iface: string, root?: string): void {
  rmSync(statePath(iface, root), { force: true });
  rmSync(readmitPath(iface, root), { force: true });
}

/** Asks the node to re-admit ranks (appended; the node consumes the file). */
export function requestReadmit(iface: string, ranks: number[], root?: string): string {
  const p = readmitPath(iface, root);
  mkdirSync(dirname(p), { recursive: true, mode: 0o755 });
  writeFileSync(p, ranks.join("\n") + "\n", { flag: "a" });
  return p;
}

/** Ranks an operator asked to re-admit since the last call (consumes them). */
export function takeReadmits(path: string): number[] {
  if (!existsSync(path)) return [];
  const tmp = `${path}.${process.pid}.taking`;
  try {
    renameSync(path, tmp);
  } catch {
    return [];
  }
  const ranks = readFileSync(tmp, "utf8").split(/\s+/).filter(Boolean).map(Number).filter(Number.isInteger);
  rmSync(tmp, { force: true });
  return ranks;
}
