// bench/profile.ts --callgraph's folding of perf's call chains.
import { describe, expect, test } from "bun:test";
import { foldCallers } from "../bench/callers.ts";

const chain = (...frames: string[]) => frames.join(";");
const head = "__sendmmsg;entry_SYSCALL_64_after_hwframe;do_syscall_64;udp_sendmsg;veth_poll;veth_xdp_rcv";

describe("foldCallers", () => {
  test("chains are cut to their last frames, one XDP program's loads merged, summed, largest first", () => {
    const report = [
      "# comment",
      "     6.82%  [k] __pi_memcpy",
      `3.22% ${chain(head, "veth_xdp_rcv_skb", "skb_pp_cow_data", "skb_copy_bits", "__pi_memcpy")}`,
      `0.94% ${chain(head, "veth_xdp_rcv_skb", "bpf_prog_8c9671f1ed69936d_ainftp_xdp", "bpf_xdp_load_bytes", "bpf_xdp_copy_buf", "__pi_memcpy")}`,
      `0.85% ${chain("__libc_sendmsg", "veth_xdp_rcv", "veth_xdp_rcv_skb", "bpf_prog_0123456789abcdef_ainftp_xdp", "bpf_xdp_load_bytes", "bpf_xdp_copy_buf", "__pi_memcpy")}`,
      `0.20% ${chain(head, "veth_xdp_rcv_skb", "skb_other", "__pi_memcpy")}`,
      "",
    ].join("\n");
    const out = foldCallers(report, 10_000);
    expect(out.map(([p]) => p)).toEqual([
      "veth_xdp_rcv › veth_xdp_rcv_skb › skb_pp_cow_data › skb_copy_bits › __pi_memcpy",
      "veth_xdp_rcv_skb › bpf_prog_ainftp_xdp › bpf_xdp_load_bytes › bpf_xdp_copy_buf › __pi_memcpy",
    ]);
    // 3.22% of 10,000 samples, and the two loads of the program together (0.94% + 0.85%)
    expect(out[0][1]).toBeCloseTo(322, 6);
    expect(out[1][1]).toBeCloseTo(179, 6);
  });

  test("chains under 0.5% of all samples are left out, and a report without chains gives nothing", () => {
    expect(foldCallers(`0.20% ${chain("a", "b", "c")}`, 10_000)).toEqual([]);
    expect(foldCallers("     6.82%  [k] __pi_memcpy\n", 10_000)).toEqual([]);
  });
});
