/**
 * `vmkit netguard`: watch traffic for denial-of-service attacks (from a pcap
 * file, a host interface or a TAP device) printing alerts and decisions as
 * they happen, and summarise a capture.
 *
 * @module
 */

import {
  blocksTraffic,
  defaultConfig,
  eventToJson,
  eventToText,
  LINKTYPE_RAW,
  LiveReader,
  loadConfigFile,
  NetGuard,
  type NetguardConfig,
  NetguardError,
  type NetguardEvent,
  openCaptureStream,
  PcapWriter,
  replayCaptureStream,
  summarizeCaptureStream,
  watchInterface,
  watchTap,
} from "../netguard/mod.ts";
import {
  listenMetrics,
  type MetricsEndpoint,
  MetricsEndpointError,
  parseListenAddress,
} from "../vmm/metrics/metrics_endpoint.ts";
import { command, type Entry, kebabKeys } from "./command.ts";
import { Exit } from "./exit.ts";
import { int, str } from "./options.ts";
import { checkPathArg, UsageError } from "./usage.ts";

const CONFIG = str("FILE", "JSON configuration (thresholds, detector, policy, whitelist, vms)", {
  complete: "file",
});

const watch = command({
  name: "watch",
  summary: "watch a capture, host interface or TAP device and print alerts and decisions",
  synopsis: "(--pcap FILE | --iface IF | --tap NAME) [options]",
  description: "Give exactly one of --pcap, --iface, --tap. With --output json, one JSON object\n" +
    "per line (ts, event, vm, direction, kind, action, ...). --pcap takes a pcap or pcapng\n" +
    "file, FIFO or device, or - for standard input: it is streamed (bounded memory at any\n" +
    "size) and reading stops at the first bad record.",
  options: {
    pcap: str("FILE", "replay this pcap/pcapng capture (- for standard input)", {
      complete: "file",
    }),
    iface: str("IF", "watch this host interface (AF_PACKET)"),
    tap: str("NAME", "watch this TAP device"),
    config: CONFIG,
    netns: str("NAME", "open --iface/--tap inside network namespace NAME"),
    vm: str("ID", "VM id for --tap traffic (default: the TAP name)"),
    duration: int("MS", "stop a live watch after MS milliseconds (default: until Ctrl-C)"),
    "stats-interval": int("MS", "emit 'stats' events every MS ms (live; 0 = off)", {
      default: 5000,
    }),
    "samples-pcap": str("FILE", "write the sample packets of every alert to FILE (raw-IP pcap)", {
      complete: "file",
    }),
    "metrics-listen": str("HOST:PORT", "serve Prometheus metrics at http://HOST:PORT/metrics"),
  },
  output: true,
  async run(ctx) {
    const o = ctx.values;
    const listen = o["metrics-listen"];
    if (listen !== undefined) {
      try {
        parseListenAddress(listen);
      } catch (err) {
        if (err instanceof MetricsEndpointError) {
          throw new UsageError(`--metrics-listen: ${err.message}`);
        }
        throw err;
      }
    }
    const sources = [o.pcap, o.iface, o.tap].filter((s) => s !== undefined).length;
    if (sources !== 1) {
      throw new UsageError("watch needs exactly one of --pcap FILE, --iface IF, --tap NAME");
    }
    for (const name of ["pcap", "config", "samples-pcap"] as const) {
      const v = o[name];
      if (v !== undefined) checkPathArg(`--${name}`, v);
    }
    const config = o.config !== undefined ? await loadConfigFile(o.config) : defaultConfig();
    const guard = new NetGuard(config);
    const samples = o["samples-pcap"] !== undefined ? new PcapWriter(LINKTYPE_RAW) : null;
    guard.onEvent((e) => {
      print(e, ctx.json);
      if (samples !== null && e.event === "alert") {
        for (const s of e.evidence.samples) {
          if (s.summary.startsWith("non-IP")) continue;
          samples.write(hexBytes(s.hex), s.ts);
        }
      }
    });
    let failure: unknown = undefined;
    let metrics: MetricsEndpoint | undefined;
    try {
      if (listen !== undefined) {
        metrics = listenMetrics(listen, () => guard.metricsText());
        console.error(
          `netguard: metrics at http://${listen.replace(/:\d+$/, "")}:${metrics.port}/metrics`,
        );
      }
      if (o.pcap !== undefined) {
        const stream = await openCaptureStream(o.pcap);
        const r = await replayCaptureStream(guard, stream, {
          source: o.pcap === "-" ? "<stdin>" : o.pcap,
          ...(o.vm !== undefined ? { vm: o.vm } : {}),
        });
        guard.stats();
        await guard.settled();
        if (r.truncatedTail) console.error(`netguard: ${o.pcap}: the last record was cut short`);
      } else {
        if ([config.policy.actions, ...config.vms.map((v) => v.actions)].some(blocksTraffic)) {
          console.error(
            "netguard: a watch only reads: its drop and rate_limit decisions are reported, " +
              "not enforced (vmkit run --netguard enforces them in the VM's NICs)",
          );
        }
        await watchLive(guard, o.iface, o.tap, o.netns, o.vm, o.duration ?? 0, o["stats-interval"]);
      }
    } catch (err) {
      // The samples of alerts raised before a bad record are still written.
      failure = err;
    } finally {
      await metrics?.close();
    }
    if (samples !== null && o["samples-pcap"] !== undefined) {
      try {
        await Deno.writeFile(o["samples-pcap"], samples.bytes());
      } catch (err) {
        throw new NetguardError(`cannot write --samples-pcap: ${(err as Error).message}`);
      }
    }
    if (failure !== undefined) throw failure;
    return Exit.OK;
  },
});

const reportCmd = command({
  name: "report",
  summary: "summarise a capture and the alerts and decisions netguard would take on it",
  args: ["FILE"],
  description: "FILE is streamed like watch's --pcap (- for standard input).\n" +
    "Prints packet classes, malformed frames, top talkers and the alerts and\n" +
    "decisions netguard would take on the capture.",
  options: { config: CONFIG },
  output: true,
  async run(ctx) {
    const [file = ""] = ctx.positionals;
    const o = ctx.values;
    checkPathArg("FILE", file);
    if (o.config !== undefined) checkPathArg("--config", o.config);
    const config = o.config !== undefined ? await loadConfigFile(o.config) : defaultConfig();
    return await report(file, config, ctx.json);
  },
});

/** The `vmkit netguard` command group. */
export const entry: Entry = {
  name: "netguard",
  summary: "per-VM denial-of-service monitor",
  commands: [watch, reportCmd],
};

function print(e: NetguardEvent, json: boolean): void {
  console.log(json ? eventToJson(e) : eventToText(e));
}

function hexBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

async function watchLive(
  guard: NetGuard,
  iface: string | undefined,
  tap: string | undefined,
  netns: string | undefined,
  vm: string | undefined,
  durationMs: number,
  statsMs: number,
): Promise<void> {
  const opts = netns !== undefined ? { netns } : {};
  const reader = tap !== undefined
    ? await LiveReader.openTap(tap, opts)
    : await LiveReader.openInterface(iface ?? "", opts);
  console.error(
    `netguard: watching ${reader.kind} ${reader.name}${netns ? ` in netns ${netns}` : ""}`,
  );
  const stop = () => void reader.close();
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  const timer = durationMs > 0 ? setTimeout(stop, durationMs) : undefined;
  const stats = statsMs > 0 ? setInterval(() => guard.stats(Date.now()), statsMs) : undefined;
  try {
    if (tap !== undefined) await watchTap(guard, reader, vm ?? tap);
    else await watchInterface(guard, reader);
  } finally {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
    if (timer !== undefined) clearTimeout(timer);
    if (stats !== undefined) clearInterval(stats);
    await reader.close();
    await guard.settled();
  }
}

async function report(path: string, config: NetguardConfig, json: boolean): Promise<number> {
  const stream = await openCaptureStream(path);
  const r = await summarizeCaptureStream(
    stream,
    config,
    config.topN,
    path === "-" ? "<stdin>" : path,
  );
  if (json) {
    console.log(JSON.stringify(kebabKeys({ file: path, ...r })));
    return Exit.OK;
  }
  const lines = [
    `${path}: ${r.format}, ${r.packets} packets, ${r.bytes} bytes` +
    (r.packets > 0 ? `, ${((r.lastTs - r.firstTs) / 1000).toFixed(3)} s` : "") +
    (r.truncatedTail ? " (last record cut short)" : "") +
    (r.outOfOrder > 0 ? ` (${r.outOfOrder} records stamped earlier than one before them)` : ""),
    `rates: average ${Math.round(r.avgPps)} pps, peak ${r.peakPps} packets in one second`,
    `IPv4 ${r.ipv4}, IPv6 ${r.ipv6}, VLAN-tagged ${r.vlanTagged}, fragments ${r.fragments}`,
    `classes: ${Object.entries(r.classes).map(([k, v]) => `${k}=${v}`).join(" ") || "none"}`,
    `malformed: ${Object.entries(r.malformed).map(([k, v]) => `${k}=${v}`).join(" ") || "none"}`,
    `top sources: ${r.topSources.map((t) => `${t.key} (${t.packets})`).join(", ") || "none"}`,
    `top destinations: ${
      r.topDestinations.map((t) => `${t.key} (${t.packets})`).join(", ") || "none"
    }`,
    `top ports: ${r.topPorts.map((t) => `${t.key} (${t.packets})`).join(", ") || "none"}`,
    `netguard would raise ${r.events.filter((e) => e.event === "alert").length} alerts:`,
    ...r.events.map((e) => `  ${eventToText(e)}`),
  ];
  console.log(lines.join("\n"));
  return Exit.OK;
}
