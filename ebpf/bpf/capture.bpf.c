// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0
// Weft traffic capture for enrolled pods.
//
// Outbound: cgroup/connect4 (and connect6 for v4-mapped destinations) sends TCP connects made inside an enrolled pod network namespace to
// the node proxy's in-pod outbound listener (127.0.0.1:15001), remembering the original
// destination by socket cookie; sockops re-keys it by (netns cookie, client address) once the
// client's port is known, which is what the proxy sees on accept. getpeername4 shows the app its
// original destination again. Sockets carrying the proxy mark are never touched.
//
// DNS: UDP queries to port 53 from an enrolled pod's apps (connect4 for connected sockets,
// sendmsg4 for sendto) go to the proxy's in-pod DNS listener (127.0.0.1:15053), the nameserver
// they were for remembered by socket cookie; recvmsg4 shows the app the answer as coming from
// that nameserver. TCP queries are captured like any TCP connect.
//
// Inbound: a tc ingress program on the pod's interfaces assigns new TCP connections to the pod's
// IP (other than HBONE on 15008 and the node's health probes) to the proxy's transparent
// inbound-plaintext listener (15006). If that listener is missing (proxy down) the SYN is dropped:
// captured traffic fails closed.
//
// Every map is keyed by something the pod cannot choose: the kernel's netns cookie or the pod IP
// the node assigned. Maps are pinned by name so that a restarted proxy finds the same state.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define DNS_PORT 53
#define DNS_PROXY_PORT 15053
#define PROXY_MARK 0x200
#define OUTBOUND_PORT 15001
#define INBOUND_PLAINTEXT_PORT 15006
#define HBONE_PORT 15008
#define LOOPBACK_IP 0x7f000001
#define MAX_PODS 4096
#define MAX_CONNS 65536

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// An original destination: IPv4 address (network order) and port (host order).
struct orig_dst {
	__u32 ip;
	__u32 port;
};

// A captured client socket as the proxy sees it on accept.
struct client_key {
	__u64 netns;
	__u32 ip;   // network order
	__u32 port; // host order
};

// Per enrolled pod, keyed by pod IP (network order).
struct pod_inbound {
	__u32 probe_src; // node address whose plaintext (health probes) reaches the app directly
	__u32 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, __u64); // netns cookie
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_enrolled SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PODS);
	__type(key, __u32);
	__type(value, struct pod_inbound);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_inbound SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64); // socket cookie
	__type(value, struct orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_pending SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, struct client_key);
	__type(value, struct orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_orig_dst SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_CONNS);
	__type(key, __u64); // socket cookie
	__type(value, struct orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} weft_dns_dst SEC(".maps");

static __always_inline int enrolled(__u64 netns)
{
	return bpf_map_lookup_elem(&weft_enrolled, &netns) != 0;
}

// A TCP connect made by an app of an enrolled pod (not by the proxy's own marked sockets).
static __always_inline int from_enrolled_app(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_STREAM || !enrolled(bpf_get_netns_cookie(ctx)))
		return 0;
	struct bpf_sock *sk = ctx->sk;
	return sk && !(sk->mark & PROXY_MARK);
}

// Remembers where a captured connect was going, by socket cookie, for sockops to re-key.
static __always_inline int remember(struct bpf_sock_addr *ctx, __u32 ip)
{
	struct orig_dst dst = {
		.ip = ip,
		.port = bpf_ntohs((__u16)ctx->user_port),
	};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	return bpf_map_update_elem(&weft_pending, &cookie, &dst, BPF_ANY) == 0;
}

// A UDP DNS query made by an app of an enrolled pod to a nameserver off loopback.
static __always_inline int dns_from_enrolled_app(struct bpf_sock_addr *ctx)
{
	if (ctx->type != SOCK_DGRAM || ctx->user_port != bpf_htons(DNS_PORT))
		return 0;
	if ((bpf_ntohl(ctx->user_ip4) >> 24) == 127 || !enrolled(bpf_get_netns_cookie(ctx)))
		return 0;
	struct bpf_sock *sk = ctx->sk;
	return sk && !(sk->mark & PROXY_MARK);
}

// Sends the query to the proxy's DNS listener, remembering the nameserver for recvmsg4.
static __always_inline int redirect_dns(struct bpf_sock_addr *ctx)
{
	struct orig_dst dst = {.ip = ctx->user_ip4, .port = DNS_PORT};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&weft_dns_dst, &cookie, &dst, BPF_ANY))
		return 0; // cannot answer as that nameserver: refuse rather than leak
	ctx->user_ip4 = bpf_htonl(LOOPBACK_IP);
	ctx->user_port = bpf_htons(DNS_PROXY_PORT);
	return 1;
}

SEC("cgroup/sendmsg4")
int weft_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (!dns_from_enrolled_app(ctx))
		return 1;
	return redirect_dns(ctx);
}

SEC("cgroup/recvmsg4")
int weft_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 != bpf_htonl(LOOPBACK_IP) || ctx->user_port != bpf_htons(DNS_PROXY_PORT))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig_dst *dst = bpf_map_lookup_elem(&weft_dns_dst, &cookie);
	if (!dst)
		return 1;
	ctx->user_ip4 = dst->ip;
	ctx->user_port = bpf_htons(DNS_PORT);
	return 1;
}

SEC("cgroup/connect4")
int weft_connect4(struct bpf_sock_addr *ctx)
{
	if (dns_from_enrolled_app(ctx))
		return redirect_dns(ctx);
	if (!from_enrolled_app(ctx))
		return 1;
	__u32 ip = ctx->user_ip4;
	if ((bpf_ntohl(ip) >> 24) == 127)
		return 1;
	if (!remember(ctx, ip))
		return 0; // cannot remember where it was going: refuse rather than lose it
	ctx->user_ip4 = bpf_htonl(LOOPBACK_IP);
	ctx->user_port = bpf_htons(OUTBOUND_PORT);
	return 1;
}

// IPv6 sockets: a v4-mapped destination (dual-stack apps reaching IPv4) is captured like
// connect4; any other IPv6 destination but loopback is refused, since the mesh carries IPv4 only
// and letting it through would bypass mTLS.
SEC("cgroup/connect6")
int weft_connect6(struct bpf_sock_addr *ctx)
{
	if (!from_enrolled_app(ctx))
		return 1;
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1], w2 = ctx->user_ip6[2];
	__u32 w3 = ctx->user_ip6[3];
	if (w0 == 0 && w1 == 0 && w2 == 0 && w3 == bpf_htonl(1))
		return 1; // ::1
	if (w0 != 0 || w1 != 0 || w2 != bpf_htonl(0xffff))
		return 0; // native IPv6: not carried by the mesh, refused (EPERM)
	if ((bpf_ntohl(w3) >> 24) == 127)
		return 1;
	if (!remember(ctx, w3))
		return 0;
	ctx->user_ip6[3] = bpf_htonl(LOOPBACK_IP);
	ctx->user_port = bpf_htons(OUTBOUND_PORT);
	return 1;
}

SEC("sockops")
int weft_sockops(struct bpf_sock_ops *skops)
{
	// AF_INET, or AF_INET6 connecting to a v4-mapped address (local_ip4 then holds the IPv4
	// source the proxy sees).
	if (skops->op != BPF_SOCK_OPS_TCP_CONNECT_CB || (skops->family != 2 && skops->family != 10))
		return 1;
	__u64 cookie = bpf_get_socket_cookie(skops);
	struct orig_dst *dst = bpf_map_lookup_elem(&weft_pending, &cookie);
	if (!dst)
		return 1;
	struct client_key key = {
		.netns = bpf_get_netns_cookie(skops),
		.ip = skops->local_ip4,
		.port = skops->local_port,
	};
	bpf_map_update_elem(&weft_orig_dst, &key, dst, BPF_ANY);
	bpf_map_delete_elem(&weft_pending, &cookie);
	return 1;
}

SEC("cgroup/getpeername4")
int weft_getpeername4(struct bpf_sock_addr *ctx)
{
	if (ctx->user_ip4 != bpf_htonl(LOOPBACK_IP) || ctx->user_port != bpf_htons(OUTBOUND_PORT))
		return 1;
	__u64 netns = bpf_get_netns_cookie(ctx);
	if (!enrolled(netns))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct client_key key = {.netns = netns, .ip = sk->src_ip4, .port = sk->src_port};
	struct orig_dst *dst = bpf_map_lookup_elem(&weft_orig_dst, &key);
	if (!dst)
		return 1;
	ctx->user_ip4 = dst->ip;
	ctx->user_port = bpf_htons((__u16)dst->port);
	return 1;
}

SEC("classifier")
int weft_tc_ingress(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return TC_ACT_OK;
	if (ip->protocol != IPPROTO_TCP || ip->ihl < 5)
		return TC_ACT_OK;
	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > data_end)
		return TC_ACT_OK;
	// Only new connections: everything else finds its established socket as usual.
	if (!tcp->syn || tcp->ack)
		return TC_ACT_OK;
	__u32 daddr = ip->daddr;
	struct pod_inbound *pod = bpf_map_lookup_elem(&weft_inbound, &daddr);
	if (!pod)
		return TC_ACT_OK;
	if (tcp->dest == bpf_htons(HBONE_PORT))
		return TC_ACT_OK;
	if (pod->probe_src && ip->saddr == pod->probe_src)
		return TC_ACT_OK;

	struct bpf_sock_tuple tuple = {};
	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = daddr;
	tuple.ipv4.sport = tcp->source;
	tuple.ipv4.dport = bpf_htons(INBOUND_PLAINTEXT_PORT);
	struct bpf_sock *sk =
		bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_SHOT; // proxy down: fail closed
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_SHOT;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}
