// Builds ainftp datagrams (header + int16 payload) and, for program tests and
// benchmarks, whole Ethernet frames around them.
import { DEFAULT_PORT, SIZEOF, writeHeader, type WireHeader } from "./abi.ts";

/** An ainftp UDP payload: wire header then `values` as little-endian int16. */
export function datagram(h: Omit<WireHeader, "count"> & { count?: number }, values: Int16Array | number[]): Uint8Array {
  const n = values.length;
  const b = new Uint8Array(SIZEOF.ainftp_wire_hdr + 2 * n);
  const v = new DataView(b.buffer);
  writeHeader(v, 0, { ...h, count: h.count ?? n });
  for (let i = 0; i < n; i++) v.setInt16(SIZEOF.ainftp_wire_hdr + 2 * i, values[i], true);
  return b;
}

export interface FrameOptions {
  dstPort?: number;
  srcPort?: number;
  /** 802.1Q tags to insert (0, 1 or 2). */
  vlans?: number;
  ipv6?: boolean;
  /** IPv4 protocol / IPv6 next header (17 = UDP). */
  proto?: number;
  /** IPv4 flags+fragment offset field (host order), e.g. 0x2000 for MF. */
  fragOff?: number;
  ihl?: number;
  /** Override the IP total length / IPv6 payload length. */
  ipLen?: number;
  /** Override the UDP length field. */
  udpLen?: number;
  ethType?: number;
}

/** Ethernet (+VLAN) + IPv4/IPv6 + UDP around `payload`. Checksums are zero:
 * the XDP program does not verify them (UDP over IPv4 allows 0). */
export function frame(payload: Uint8Array, o: FrameOptions = {}): Uint8Array {
  const vlans = o.vlans ?? 0;
  const l2 = 14 + 4 * vlans;
  const ihl = o.ihl ?? 5;
  const l3 = o.ipv6 ? 40 : ihl * 4;
  const b = new Uint8Array(l2 + l3 + 8 + payload.length);
  const v = new DataView(b.buffer);
  b.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1], 0); // dst, src MAC
  let off = 12;
  for (let i = 0; i < vlans; i++) {
    v.setUint16(off, 0x8100);
    v.setUint16(off + 2, 100 + i);
    off += 4;
  }
  v.setUint16(off, o.ethType ?? (o.ipv6 ? 0x86dd : 0x0800));
  const ip = l2;
  const udpTotal = 8 + payload.length;
  if (o.ipv6) {
    v.setUint32(ip, 0x60000000);
    v.setUint16(ip + 4, o.ipLen ?? udpTotal);
    v.setUint8(ip + 6, o.proto ?? 17);
    v.setUint8(ip + 7, 64);
    b[ip + 23] = 1; // ::1 style addresses
    b[ip + 39] = 2;
  } else {
    v.setUint8(ip, 0x40 | (ihl & 0xf));
    v.setUint16(ip + 2, o.ipLen ?? l3 + udpTotal);
    v.setUint16(ip + 6, o.fragOff ?? 0);
    v.setUint8(ip + 8, 64);
    v.setUint8(ip + 9, o.proto ?? 17);
    b.set([10, 99, 0, 1], ip + 12);
    b.set([10, 99, 0, 2], ip + 16);
  }
  const udp = l2 + l3;
  v.setUint16(udp, o.srcPort ?? 40000);
  v.setUint16(udp + 2, o.dstPort ?? DEFAULT_PORT);
  v.setUint16(udp + 4, o.udpLen ?? udpTotal);
  b.set(payload, udp + 8);
  return b;
}
