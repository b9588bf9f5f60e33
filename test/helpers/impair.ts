// Loss and duplication at each bridge port of a lab (the netem equivalent
// this kernel allows: no sch_netem here): a tc-BPF program on the ingress of
// every port drops LOSS_PPM and clones DUP_PPM of the frames to the job's UDP
// port. The nodes' UDP GSO is turned off, so each frame is one packet.
// test/collective.test.ts uses the same program with its delay line.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { must, sh, type Lab } from "./netns.ts";

/** The tc program: loss, duplication and (DELAY_PPM, DELAY_IFINDEX) a detour through a delay line. */
export const IMPAIR_BPF = `
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MARK 0x41f7a11 /* a duplicate re-entering the ingress */

/* frames seen, dropped, duplicated, delayed */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} impair_stats SEC(".maps");

static __always_inline void bump(__u32 k)
{
	__u64 *v = bpf_map_lookup_elem(&impair_stats, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int chance(__u32 ppm)
{
	return ppm && bpf_get_prandom_u32() % 1000000 < ppm;
}

SEC("tc")
int impair(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if (skb->mark == MARK || (void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != 17 || ip->ihl != 5)
		return TC_ACT_OK;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end || udp->dest != bpf_htons(PORT))
		return TC_ACT_OK;
	bump(0);
	if (chance(LOSS_PPM)) {
		bump(1);
		return TC_ACT_SHOT;
	}
	if (chance(DUP_PPM)) {
		bump(2);
		skb->mark = MARK;
		bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS);
		skb->mark = 0;
	}
	if (chance(DELAY_PPM)) {
		bump(3);
		return bpf_redirect(DELAY_IFINDEX, 0);
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
`;

export const impairToolsPresent = () => ["clang-19", "tc", "ethtool"].every((c) => sh(["which", c]).code === 0);

/** Loss and duplication on the ports of a bridge lab (createLab with link "bridge"). */
export class PortImpairer {
  private readonly br: string;
  private objs = new Map<string, string>();

  constructor(readonly lab: Lab, readonly nodes: string[], readonly port = 47000, readonly ifname = "eth0") {
    this.br = `${lab.id}-br`;
    for (const n of nodes) lab.must(n, ["ethtool", "-K", ifname, "tx-udp-segmentation", "off"]);
    writeFileSync(join(lab.tmp, "port-impair.bpf.c"), IMPAIR_BPF);
  }

  private object(lossPpm: number, dupPpm: number): string {
    const key = `${lossPpm}-${dupPpm}`;
    let obj = this.objs.get(key);
    if (!obj) {
      obj = join(this.lab.tmp, `port-impair-${key}.o`);
      must(["clang-19", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", `-I/usr/include/${process.arch === "arm64" ? "aarch64" : "x86_64"}-linux-gnu`,
        `-DPORT=${this.port}`, `-DLOSS_PPM=${lossPpm}`, `-DDUP_PPM=${dupPpm}`, "-DDELAY_PPM=0", "-DDELAY_IFINDEX=0", "-c", join(this.lab.tmp, "port-impair.bpf.c"), "-o", obj]);
      this.objs.set(key, obj);
    }
    return obj;
  }

  /** Every port drops lossPpm and duplicates dupPpm of the job's frames (parts per million). */
  apply(lossPpm: number, dupPpm: number): void {
    this.clear();
    const obj = this.object(lossPpm, dupPpm);
    this.nodes.forEach((_, k) => {
      must(["nsenter", `--net=/run/netns/${this.br}`, "tc", "qdisc", "add", "dev", `p${k}`, "clsact"]);
      must(["nsenter", `--net=/run/netns/${this.br}`, "tc", "filter", "add", "dev", `p${k}`, "ingress", "bpf", "da", "obj", obj, "sec", "tc"]);
    });
  }

  /** Frames seen, dropped and duplicated, summed over the ports. */
  stats(): { seen: number; dropped: number; duplicated: number } {
    const sum = { seen: 0, dropped: 0, duplicated: 0 };
    this.nodes.forEach((_, k) => {
      const f = JSON.parse(must(["nsenter", `--net=/run/netns/${this.br}`, "tc", "-j", "filter", "show", "dev", `p${k}`, "ingress"])).find((x: any) => x.options?.prog);
      const prog = JSON.parse(must(["bpftool", "-j", "prog", "show", "id", String(f.options.prog.id)]));
      const mapId = (prog.map_ids as number[]).find((id) => JSON.parse(must(["bpftool", "-j", "map", "show", "id", String(id)])).name === "impair_stats");
      const v = JSON.parse(must(["bpftool", "-j", "map", "dump", "id", String(mapId)])).map((e: any) =>
        e.formatted ? Number(e.formatted.value) : (e.value as string[]).reduceRight((a, h) => a * 256 + parseInt(h, 16), 0));
      sum.seen += v[0];
      sum.dropped += v[1];
      sum.duplicated += v[2];
    });
    return sum;
  }

  clear(): void {
    this.nodes.forEach((_, k) => sh(["nsenter", `--net=/run/netns/${this.br}`, "tc", "qdisc", "del", "dev", `p${k}`, "clsact"]));
  }
}
