/**
 * `vmkit netguard`: watch traffic for denial-of-service attacks (from a pcap
 * file, a host interface or a TAP device) printing alerts and decisions as
 * they happen, and summarise a capture.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  type Capture,
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
  PcapWriter,
  readCaptureFile,
  replayCapture,
  summarizeCapture,
  watchInterface,
  watchTap,
} from "../netguard/mod.ts";

const USAGE = `usage:
  vmkit netguard watch (--pcap FILE | --iface IF | --tap NAME) [options]
  vmkit netguard report FILE.pcap [--config FILE] [--json]

watch options:
  --config FILE          JSON configuration (thresholds, detector, policy, whitelist, vms)
  --json                 one JSON object per line (ts, event, vm, direction, kind, action, ...)
  --netns NAME           open --iface/--tap inside network namespace NAME
  --vm ID                VM id for --tap traffic (default: the TAP name)
  --duration MS          stop a live watch after MS milliseconds (default: until Ctrl-C)
  --stats-interval MS    emit 'stats' events every MS ms (live; 0 = off; default 5000)
  --samples-pcap FILE    write the sample packets of every alert to FILE (raw-IP pcap)
  --help                 show this help

report prints packet classes, malformed frames, top talkers and the alerts and
decisions netguard would take on the capture.`;

function fail(msg: string, code = 2): number {
  console.error(`vmkit netguard: ${msg}`);
  return code;
}

/** Runs `vmkit netguard`; returns the exit status. */
export async function main(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      strict: true,
      allowPositionals: true,
      options: {
        pcap: { type: "string" },
        iface: { type: "string" },
        tap: { type: "string" },
        config: { type: "string" },
        json: { type: "boolean", default: false },
        netns: { type: "string" },
        vm: { type: "string" },
        duration: { type: "string" },
        "stats-interval": { type: "string" },
        "samples-pcap": { type: "string" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (err) {
    return fail(`${err instanceof Error ? err.message : String(err)} (see --help)`);
  }
  const { values: o, positionals } = parsed;
  if (o.help) {
    console.log(USAGE);
    return 0;
  }
  const [cmd, ...rest] = positionals;
  if (cmd === undefined) return fail("missing subcommand: watch or report (see --help)");
  let config: NetguardConfig;
  try {
    config = o.config !== undefined ? await loadConfigFile(o.config) : defaultConfig();
  } catch (err) {
    return fail(err instanceof Error ? err.message : String(err), 1);
  }
  if (cmd === "report") {
    if (rest.length !== 1 || rest[0] === undefined) {
      return fail("report takes exactly one capture file");
    }
    return await report(rest[0], config, o.json);
  }
  if (cmd !== "watch") return fail(`unknown subcommand '${cmd}' (expected watch or report)`);
  if (rest.length > 0) return fail(`unexpected argument '${rest[0]}'`);
  const sources = [o.pcap, o.iface, o.tap].filter((s) => s !== undefined).length;
  if (sources !== 1) return fail("watch needs exactly one of --pcap FILE, --iface IF, --tap NAME");
  const duration = numberOption(o.duration, "--duration");
  const statsEvery = numberOption(o["stats-interval"], "--stats-interval");
  if (typeof duration === "string") return fail(duration);
  if (typeof statsEvery === "string") return fail(statsEvery);

  const guard = new NetGuard(config);
  const samples = o["samples-pcap"] !== undefined ? new PcapWriter(LINKTYPE_RAW) : null;
  guard.onEvent((e) => {
    print(e, o.json);
    if (samples !== null && e.event === "alert") {
      for (const s of e.evidence.samples) {
        if (s.summary.startsWith("non-IP")) continue;
        samples.write(hexBytes(s.hex), s.ts);
      }
    }
  });
  try {
    if (o.pcap !== undefined) {
      let cap: Capture;
      try {
        cap = await readCaptureFile(o.pcap);
      } catch (err) {
        return fail(err instanceof Error ? err.message : String(err), 1);
      }
      replayCapture(guard, cap, o.vm !== undefined ? { vm: o.vm } : {});
      guard.stats();
      await guard.settled();
    } else {
      await watchLive(guard, o.iface, o.tap, o.netns, o.vm, duration ?? 0, statsEvery ?? 5000);
    }
  } catch (err) {
    if (err instanceof NetguardError) return fail(err.message, 1);
    throw err;
  } finally {
    if (samples !== null && o["samples-pcap"] !== undefined) {
      await Deno.writeFile(o["samples-pcap"], samples.bytes());
    }
  }
  return 0;
}

function numberOption(v: string | undefined, name: string): number | undefined | string {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) {
    return `${name} wants a non-negative number of milliseconds, got '${v}'`;
  }
  return n;
}

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
  let cap: Capture;
  try {
    cap = await readCaptureFile(path);
  } catch (err) {
    return fail(err instanceof Error ? err.message : String(err), 1);
  }
  const r = summarizeCapture(cap, config, config.topN);
  if (json) {
    console.log(JSON.stringify({ file: path, ...r }));
    return 0;
  }
  const lines = [
    `${path}: ${r.format}, ${r.packets} packets, ${r.bytes} bytes` +
    (r.packets > 0 ? `, ${((r.lastTs - r.firstTs) / 1000).toFixed(3)} s` : "") +
    (r.truncatedTail ? " (last record cut short)" : ""),
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
  return 0;
}
