// The job key's primitives: SipHash-2-4 in C (native/mac.c) against the
// reference vectors of Aumasson and Bernstein (key 00..0f, message i =
// bytes 00..i-1, tags as little-endian bytes), the seal/verify pair the
// control plane uses, the key's parsing and `ainftp keygen`.
import { describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KEY_BYTES, TAG_BYTES, macSeal, macVerify, siphash24 } from "../native/mac.ts";
import { generateKey, loadJobKey, parseKey, writeKeyFile } from "../src/jobkey.ts";
import { run } from "../cli/program.ts";

const VECTORS = [
  "310e0edd47db6f72", "fd67dc93c539f874", "5a4fa9d909806c0d", "2d7efbd796666785",
  "b7877127e09427cf", "8da699cd64557618", "cee3fe586e46c9cb", "37d1018bf50002ab",
  "6224939a79f5f593", "b0e4a90bdf82009e", "f3b9dd94c5bb5d7a", "a7ad6b22462fb3f4",
  "fbe50e86bc8f1e75", "903d84c02756ea14", "eef27a8e90ca23f7", "e545be4961ca29a1",
  "db9bc2577fcc2a3f", "9447be2cf5e99a69", "9cd38d96f0b3c14b", "bd6179a71dc96dbb",
  "98eea21af25cd6be", "c7673b2eb0cbf2d0", "883ea3e395675393", "c8ce5ccd8c030ca8",
  "94af49f6c650adb8", "eab8858ade92e1bc", "f315bb5bb835d817", "adcf6b0763612e2f",
  "a5c91da7acaa4dde", "716595876650a2a6", "28ef495c53a387ad", "42c341d8fa92d832",
  "ce7cf2722f512771", "e37859f94623f3a7", "381205bb1ab0e012", "ae97a10fd434e015",
  "b4a31508beff4d31", "81396229f0907902", "4d0cf49ee5d4dcca", "5c73336a76d8bf9a",
  "d0a704536ba93e0e", "925958fcd6420cad", "a915c29bc8067318", "952b79f3bc0aa6d4",
  "f21df2e41d4535f9", "87577519048f53a9", "10a56cf5dfcd9adb", "eb75095ccd986cd0",
  "51a9cb9ecba312e6", "96afadfc2ce666c7", "72fe52975a4364ee", "5a1645b276d592a1",
  "b274cb8ebf87870a", "6f9bb4203de7b381", "eaecb2a30b22a87f", "9924a43cc1315724",
  "bd838d3aafbf8db7", "0b1a2a3265d51aea", "135079a3231ce660", "932b2846e4d70666",
  "e1915f5cb1eca46c", "f325965ca16d629f", "575ff28e60381be5", "724506eb4c328a95",
];

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const KEY = Uint8Array.from({ length: 16 }, (_, i) => i);

describe("SipHash-2-4 (native/mac.c)", () => {
  test("the 64 reference vectors", () => {
    const got = VECTORS.map((_, i) => hex(siphash24(KEY, Uint8Array.from({ length: i }, (_, j) => j))));
    expect(got).toEqual(VECTORS);
  });

  test("a message at an offset in a larger buffer hashes as a copy of it", () => {
    const buf = new Uint8Array(100).map((_, i) => (i * 7) & 0xff);
    for (const [off, len] of [[1, 15], [3, 64], [13, 0], [50, 50]])
      expect(hex(siphash24(KEY, buf.subarray(off, off + len)))).toBe(hex(siphash24(KEY, buf.slice(off, off + len))));
  });

  test("seal writes the tag after the message; verify accepts it and rejects any flipped bit, other key or truncation", () => {
    const msg = new Uint8Array(32 + 40 + TAG_BYTES).map((_, i) => (i * 13 + 5) & 0xff);
    const len = msg.length - TAG_BYTES;
    macSeal(KEY, msg, len);
    expect(hex(msg.subarray(len))).toBe(hex(siphash24(KEY, msg.subarray(0, len))));
    expect(macVerify(KEY, msg)).toBe(true);
    for (let bit = 0; bit < msg.length * 8; bit += 7) {
      const bad = msg.slice();
      bad[bit >> 3] ^= 1 << (bit & 7);
      expect(macVerify(KEY, bad)).toBe(false);
    }
    const other = KEY.slice();
    other[15] ^= 0x80;
    expect(macVerify(other, msg)).toBe(false);
    expect(macVerify(KEY, msg.subarray(0, msg.length - 1))).toBe(false);
    expect(macVerify(KEY, new Uint8Array(7))).toBe(false);
  });

  test("lengths the C side would trust are checked in TypeScript", () => {
    expect(() => siphash24(new Uint8Array(15), new Uint8Array(1))).toThrow(/16 bytes/);
    expect(() => macSeal(KEY, new Uint8Array(10), 3)).toThrow(/no room/);
    expect(KEY_BYTES).toBe(16);
  });
});

describe("the job key", () => {
  test("parseKey takes 32 hex digits (whitespace around them) and names the source and the fix otherwise", () => {
    expect(hex(parseKey(" 000102030405060708090a0b0c0d0e0f\n", "x"))).toBe(hex(KEY));
    expect(() => parseKey("00112233", "--key-file k")).toThrow(/--key-file k must hold 32 hex digits/);
    expect(() => parseKey("zz".repeat(16), "AINFTP_JOB_KEY")).toThrow(/AINFTP_JOB_KEY/);
  });

  test("--key-file wins over AINFTP_JOB_KEY; neither: no key", () => {
    const dir = mkdtempSync(join(tmpdir(), "ainftp-key-"));
    try {
      const f = join(dir, "k");
      writeKeyFile(f, "0f".repeat(16));
      expect(statSync(f).mode & 0o777).toBe(0o600);
      expect(hex(loadJobKey({ keyFile: f, env: { AINFTP_JOB_KEY: "00".repeat(16) } })!)).toBe("0f".repeat(16));
      expect(hex(loadJobKey({ env: { AINFTP_JOB_KEY: "ab".repeat(16) } })!)).toBe("ab".repeat(16));
      expect(loadJobKey({ env: {} })).toBeNull();
      expect(() => loadJobKey({ keyFile: join(dir, "missing") })).toThrow(/cannot read --key-file/);
      expect(() => writeKeyFile(f)).toThrow(/EEXIST/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("generateKey: 32 hex digits, different every time", () => {
    const a = generateKey(), b = generateKey();
    expect(a).toMatch(/^[0-9a-f]{32}$/);
    expect(a).not.toBe(b);
  });

  test("ainftp keygen prints a key, or writes one with --out (0600) and refuses to overwrite it", async () => {
    const out: string[] = [], err: string[] = [];
    const io = { out: (s: string) => void out.push(s), err: (s: string) => void err.push(s), tty: false };
    expect(await run(["keygen"], io)).toBe(0);
    expect(out.join("")).toMatch(/^[0-9a-f]{32}\n$/);
    const dir = mkdtempSync(join(tmpdir(), "ainftp-key-"));
    try {
      const f = join(dir, "job.key");
      expect(await run(["keygen", "--out", f, "--json"], io)).toBe(0);
      expect(parseKey(readFileSync(f, "utf8"), f).length).toBe(16);
      expect(statSync(f).mode & 0o777).toBe(0o600);
      expect(await run(["keygen", "--out", f], io)).not.toBe(0);
      expect(err.join("")).toMatch(/never overwritten/);
      expect(existsSync(f)).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("the data plane's MAC in C (ainftp_seal_packets)", () => {
  test("seals packets in a buffer exactly as sealDatagram (what the XDP program checks), both modes", async () => {
    const { sealPackets } = await import("../native/mac.ts");
    const { sealDatagram } = await import("../src/jobkey.ts");
    const { datagram } = await import("../src/packet.ts");
    const { PKT_CONTRIB } = await import("../src/abi.ts");
    const stride = 32 + 2 * 720 + 8;
    const counts = [720, 1, 3, 719];
    for (const full of [false, true]) {
      const buf = new Uint8Array(stride * counts.length);
      const want = counts.map((n, i) => {
        const d = datagram({ type: PKT_CONTRIB, jobId: 5, round: 9, chunk: i, rank: 1 }, Array.from({ length: n }, (_, j) => (j * 31 + i) % 5000 - 2500));
        buf.set(d, i * stride);
        return sealDatagram(KEY, d, full ? "full" : "header");
      });
      sealPackets(KEY, buf, counts.length, stride, full);
      counts.forEach((n, i) => expect(hex(buf.subarray(i * stride, i * stride + 32 + 2 * n + 8))).toBe(hex(want[i])));
    }
    const tight = new Uint8Array(32 + 1440 + 4);
    tight.set(datagram({ type: PKT_CONTRIB, jobId: 5, round: 9, chunk: 0, rank: 1 }, new Array(720).fill(1)));
    expect(() => sealPackets(KEY, tight, 1, tight.length, false)).toThrow(/stride/);
  });
});
