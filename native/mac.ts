// native/mac.c through bun:ffi: SipHash-2-4 under the job key, for the
// control plane's MAC (seal a packet, verify one). Typed wrappers below check
// the lengths the C side trusts.
import { FFIType as T } from "bun:ffi";
import { openShimTable } from "./shim.ts";

const mac = openShimTable({
  ainftp_siphash24: { args: [T.ptr, T.ptr, T.u32, T.ptr], returns: T.void },
  ainftp_mac_seal: { args: [T.ptr, T.ptr, T.u32], returns: T.void },
  ainftp_mac_verify: { args: [T.ptr, T.ptr, T.u32], returns: T.i32 },
  ainftp_seal_packets: { args: [T.ptr, T.ptr, T.u32, T.u32, T.u32], returns: T.i32 },
});

/** Bytes of a job key (128 bits) and of a tag (64 bits). */
export const KEY_BYTES = 16;
export const TAG_BYTES = 8;

function checkKey(key: Uint8Array): void {
  if (key.length !== KEY_BYTES) throw new RangeError(`a job key is ${KEY_BYTES} bytes, not ${key.length}`);
}

/** SipHash-2-4 of msg under key: the 8-byte tag (little-endian, as the reference). */
export function siphash24(key: Uint8Array, msg: Uint8Array): Uint8Array {
  checkKey(key);
  const out = new Uint8Array(TAG_BYTES);
  // a zero-length view has no pointer bun:ffi accepts: hash from a 1-byte buffer
  mac.ainftp_siphash24(key, msg.length ? msg : new Uint8Array(1), msg.length, out);
  return out;
}

/** Writes the tag of buf[0..len) at buf[len..len+8); buf must have room. */
export function macSeal(key: Uint8Array, buf: Uint8Array, len: number): void {
  checkKey(key);
  if (len < 0 || len + TAG_BYTES > buf.length) throw new RangeError(`no room for a tag after ${len} bytes of ${buf.length}`);
  mac.ainftp_mac_seal(key, buf, len);
}

/** Whether buf ends with the tag of what precedes it (length >= 8); constant time. */
export function macVerify(key: Uint8Array, buf: Uint8Array): boolean {
  checkKey(key);
  if (buf.length < TAG_BYTES) return false;
  return mac.ainftp_mac_verify(key, buf, buf.length - TAG_BYTES) === 1;
}

/** Seals n CONTRIB/RESULT packets every `stride` bytes of buf (the data
 * plane's MAC, ainftp_abi.h): the tag of the header (full false) or header
 * and payload, after each payload. Throws if a tag does not fit its stride. */
export function sealPackets(key: Uint8Array, buf: Uint8Array, n: number, stride: number, full: boolean): void {
  checkKey(key);
  if (n === 0) return;
  if (stride < 40 || n * stride > buf.length + stride - 40) throw new RangeError(`${n} packets of stride ${stride} do not fit ${buf.length} bytes`);
  if (mac.ainftp_seal_packets(key, buf, n, stride, full ? 1 : 0) !== n) throw new RangeError(`a packet's tag does not fit its stride ${stride}`);
}
