/**
 * vmkit `netguard`: a per-VM traffic monitor that detects denial-of-service
 * attacks and suspends VMs to protect the others on the host (after
 * US8266275B2).
 *
 * - {@link parseEthernet}: zero-copy frame parsing (Ethernet, 802.1Q, IPv4
 *   with fragments, IPv6 with extension headers, TCP, UDP, ICMP/ICMPv6);
 *   malformed frames are counted, never thrown. {@link classifyEthernet}: the
 *   frame's class alone in one straight-line pass (what a filter or counter
 *   needs), always the class the full parser gives.
 * - {@link NetGuard}: per VM, interface and direction, sliding-window rates,
 *   SYN share, flows, top talkers in bounded memory; threshold detectors with
 *   "exceeded for N ms" and hysteresis, and an EWMA + CUSUM adaptive one;
 *   a policy that suspends the VM under attack, the VM sending one, or the
 *   lowest-priority VMs, or rate-limits/drops, and resumes after a hold time.
 *   VMs are anything {@link PausableVm} (the vmm `Machine` is one).
 * - Inputs: the frame tap ({@link NetGuard.frame}), TAP devices and host
 *   interfaces ({@link LiveReader}), pcap/pcapng as Web Streams of any size
 *   with bounded memory ({@link readCaptureStream}, {@link replayCaptureStream},
 *   {@link openCaptureStream} for files, FIFOs and stdin) or indexed in memory
 *   ({@link readCapture}, {@link replayCapture}); one incremental parser,
 *   {@link CaptureDecoder}, serves both. {@link PcapWriter} writes samples for tcpdump.
 *   Link types: Ethernet, raw IP, Linux cooked v1/v2 (`tcpdump -i any`) and BSD
 *   loopback (macOS `lo0`); byte rates count a frame as it was on the wire
 *   ({@link wireLength}: a cooked or loopback header counts as the 14-byte
 *   Ethernet header it replaced), so one traffic gives one rate however it was captured.
 *
 * @example
 * ```ts
 * import { buildFrame, NetGuard, parseConfig } from "./mod.ts";
 *
 * const guard = new NetGuard(parseConfig({ thresholds: { synPps: 1000 } }));
 * let paused = false;
 * guard.registerVm("web", {
 *   pause: () => Promise.resolve(void (paused = true)),
 *   resume: () => Promise.resolve(void (paused = false)),
 * });
 * guard.onEvent((e) => console.log(JSON.stringify(e)));
 * const syn = buildFrame({ src: "198.51.100.7", dst: "10.0.0.2", proto: "tcp", flags: 0x02 });
 * for (let i = 0; i < 500; i++) guard.frame("web", "inbound", syn, 1_000_000 + i);
 * await guard.settled();
 * console.log(paused); // true: a 1000 pps SYN flood suspended "web"
 * ```
 *
 * @module
 */

export * from "./errors.ts";
export * from "./packet.ts";
export * from "./packet_text.ts";
export * from "./classify.ts";
export * from "./pcap_decoder.ts";
export * from "./pcap.ts";
export * from "./capture_stream.ts";
export * from "./cidr.ts";
export * from "./config.ts";
export * from "./config_parse.ts";
export * from "./events.ts";
export * from "./sliding_window.ts";
export * from "./top_k.ts";
export * from "./flow_table.ts";
export * from "./conn_tracker.ts";
export * from "./detectors.ts";
export * from "./token_bucket.ts";
export * from "./monitor.ts";
export * from "./guard.ts";
export * from "./capture_input.ts";
export * from "./live_input.ts";
export * from "./synth.ts";
export * from "./report.ts";
