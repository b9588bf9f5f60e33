// The namespace lab's MTU (src/lab/netns.ts, createLab's `mtu`): set on every
// link, the bridge's ports and br0 included. bench/profile.ts once set it on
// the nodes' eth0 alone: the bridge ports stayed at 1500, and the kernel
// drops a frame larger than a veth peer's MTU unless it is a GSO batch
// (is_skb_forwardable; counted as the sender's TX dropped). So every
// full-size datagram sent alone vanished (a lone retransmission, a result
// after a deadline close, a window refill of one chunk) while GSO batches
// arrived, and back-to-back 16 MiB rounds stalled on one chunk whose every
// resend went alone. Here a full-size datagram sent alone, and a GSO batch,
// must both cross the bridge, and nothing may count as dropped.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, canUseNetns, createLab, lineReader, type Lab } from "./helpers/netns.ts";

const MTU = 3504; // bench/profile.ts's default
const SEG = MTU - 28; // the largest UDP payload one IPv4 frame holds
const PORT = 47300;

const RECEIVER = `
import { UdpEndpoint } from "${ROOT}/src/transport.ts";
const [addr, port, want] = process.argv.slice(2);
const rx = UdpEndpoint.open(addr, Number(port), { rcvbuf: 4 << 20 });
process.stdout.write("ready\\n");
const lens = {};
let got = 0;
const end = performance.now() + 5000;
while (got < Number(want) && performance.now() < end) {
  const b = rx.recvBatch(200);
  for (let i = 0; i < b.count; i++, got++) lens[b.datagram(i).length] = (lens[b.datagram(i).length] ?? 0) + 1;
}
console.log(JSON.stringify({ got, lens }));
rx.close();
`;

// a lone datagram (no GSO: what a one-chunk retransmission sends), then a GSO batch of three
const SENDER = `
import { UdpEndpoint } from "${ROOT}/src/transport.ts";
const [bind, dst, port, seg] = process.argv.slice(2);
const SEG = Number(seg);
const tx = UdpEndpoint.open(bind, 0);
const lone = tx.sendGso(dst, Number(port), new Uint8Array(SEG).fill(1), SEG, 1, SEG);
const batch = tx.sendGso(dst, Number(port), new Uint8Array(2 * SEG + 1000).fill(2), SEG, 3, 1000);
console.log(JSON.stringify({ lone, batch }));
tx.close();
`;

test("createLab refuses an MTU outside 68..65535, saying which values it takes", () => {
  expect(() => createLab("mtux", ["a", "b", "c"], { mtu: 50 })).toThrow("lab MTU 50: give an integer in 68..65535");
  expect(() => createLab("mtux", ["a", "b", "c"], { mtu: 1500.5 })).toThrow("give an integer in 68..65535");
});

const kernel = canUseNetns();
if (!kernel) console.warn("SKIPPING the lab MTU test: it needs root, `ip netns` and nsenter (CI runs it as root)");

describe.skipIf(!kernel)(`a bridged lab at MTU ${MTU}`, () => {
  let lab: Lab;
  beforeAll(() => {
    lab = createLab("mtu", ["a", "b", "c"], { subnet: "10.213.97", mtu: MTU });
    writeFileSync(join(lab.tmp, "receiver.ts"), RECEIVER);
    writeFileSync(join(lab.tmp, "sender.ts"), SENDER);
  });
  afterAll(() => lab?.destroy());

  const txDropped = (n: string) => {
    const j = JSON.parse(lab.must(n, ["ip", "-s", "-j", "link", "show", "dev", "eth0"]))[0];
    return Number(j.stats64?.tx?.dropped ?? j.stats?.tx?.dropped);
  };

  test("every link has the MTU: the nodes' eth0, the bridge's ports and br0", () => {
    const br = lab.names[lab.names.length - 1];
    const brLinks = JSON.parse(lab.must("a", ["ip", "-n", br, "-j", "link", "show"])) as { ifname: string; mtu: number }[];
    const mtus = Object.fromEntries(brLinks.filter((l) => l.ifname !== "lo").map((l) => [l.ifname, l.mtu]));
    expect(mtus).toEqual({ br0: MTU, p0: MTU, p1: MTU, p2: MTU });
    for (const n of ["a", "b", "c"]) expect(lab.linkInfo(n, "eth0").mtu).toBe(MTU);
  });

  test(`a ${SEG}-byte datagram sent alone crosses the bridge, as a GSO batch does; nothing is dropped`, async () => {
    const before = txDropped("a");
    const b = lab.node("b");
    const p = lab.spawn("b", [process.execPath, join(lab.tmp, "receiver.ts"), b.addr, String(PORT), "4"]);
    const lines = lineReader(p);
    try {
      expect(await lines.next()).toBe("ready");
      const r = lab.run("a", [process.execPath, join(lab.tmp, "sender.ts"), lab.node("a").addr, b.addr, String(PORT), String(SEG)]);
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({ lone: 1, batch: 3 });
      // before the fix: got 3, lens {SEG: 2, 1000: 1}, and a's TX dropped one more
      expect(JSON.parse(await lines.next())).toEqual({ got: 4, lens: { [SEG]: 3, 1000: 1 } });
      expect(txDropped("a") - before).toBe(0);
    } finally {
      if (p.exitCode === null) p.kill(9);
      await p.exited;
    }
  }, 30_000);
});
