// The job key: a 128-bit secret shared by a job's members, under which every
// control packet carries a SipHash-2-4 tag (native/mac.c). Given as 32 hex
// digits in a file (--key-file) or in AINFTP_JOB_KEY; `ainftp keygen` makes one.
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { KEY_BYTES, TAG_BYTES, siphash24 } from "../native/mac.ts";
import { AinftpError } from "./errors.ts";

export const JOB_KEY_ENV = "AINFTP_JOB_KEY";

/** A fresh key from the system's CSPRNG, as 32 lowercase hex digits. */
export function generateKey(): string {
  return randomBytes(KEY_BYTES).toString("hex");
}

/** 32 hex digits (surrounding whitespace allowed) → 16 bytes; `where` names the source in errors. */
export function parseKey(text: string, where: string): Uint8Array {
  const hex = text.trim();
  if (!/^[0-9a-fA-F]{32}$/.test(hex))
    throw new AinftpError("job key", `${where} must hold 32 hex digits (128 bits), not ${hex.length} characters`, {
      hint: "make one with: ainftp keygen > job.key (then --key-file job.key on every member)",
    });
  return Uint8Array.from(Buffer.from(hex, "hex"));
}

/** The job's key: --key-file wins over AINFTP_JOB_KEY; null when neither is given. */
export function loadJobKey(o: { keyFile?: string; env?: Record<string, string | undefined> } = {}): Uint8Array | null {
  if (o.keyFile) {
    let text: string;
    try {
      text = readFileSync(o.keyFile, "utf8");
    } catch (e) {
      throw new AinftpError("job key", `cannot read --key-file ${o.keyFile}: ${(e as Error).message}`, {
        hint: "give the path of a file made by `ainftp keygen`",
      });
    }
    return parseKey(text, `--key-file ${o.keyFile}`);
  }
  const v = (o.env ?? process.env)[JOB_KEY_ENV];
  return v ? parseKey(v, JOB_KEY_ENV) : null;
}

/** Writes a new key to `path`, readable by its owner only. */
export function writeKeyFile(path: string, key = generateKey()): void {
  try {
    writeFileSync(path, key + "\n", { mode: 0o600, flag: "wx" });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new AinftpError("keygen", `cannot create ${path}: ${(e as Error).message}`, {
      hint: code === "EEXIST" ? "a key file is never overwritten: remove it first, or choose another --out" : "choose a writable path for --out",
    });
  }
  chmodSync(path, 0o600);
}

/** How much of a contribution or result the data plane's MAC covers
 * (ainftp_abi.h): the header only, or header and payload. */
export type AuthMode = "off" | "header" | "full";

/** A CONTRIB/RESULT datagram (header + payload) with its MAC appended, as the
 * XDP program checks it under CFG_AUTH_HDR ("header") or CFG_AUTH_FULL. */
export function sealDatagram(key: Uint8Array, dgram: Uint8Array, mode: Exclude<AuthMode, "off">): Uint8Array {
  const out = new Uint8Array(dgram.length + TAG_BYTES);
  out.set(dgram);
  out.set(siphash24(key, mode === "full" ? dgram : dgram.subarray(0, 32)), dgram.length);
  return out;
}
