// Sizes as users write them: 1MiB, 16MiB, 1GiB, 64KiB, 1MB (10^6), or bytes.
import { AinftpError } from "./errors.ts";

const UNITS: Record<string, number> = {
  "": 1, b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
};

/** Bytes in a size like "16MiB", "1.5GiB", "4096". */
export function parseSize(text: string, what = "size"): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m ? UNITS[m[2].toLowerCase()] : undefined;
  if (!m || unit === undefined)
    throw new AinftpError(what, `'${text}' is not a size`, { hint: "write it as 1MiB, 16MiB, 1GiB, 64KiB or a byte count" });
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new AinftpError(what, `'${text}' is not a positive size`);
  return bytes;
}

/** 16777216 → "16 MiB". */
export function formatSize(bytes: number): string {
  for (const [u, f] of [["GiB", 1024 ** 3], ["MiB", 1024 ** 2], ["KiB", 1024]] as const)
    if (bytes >= f) return `${+(bytes / f).toFixed(2)} ${u}`;
  return `${bytes} B`;
}
