import assert from "node:assert/strict";
import { PcapWriter, synthesizeTrace } from "../../netguard/mod.ts";
import { BAD_NAME, vmkitNonUtf8 } from "../non_utf8.ts";
import { type CliResult, vmkitCli } from "../vmkit_cli.ts";

async function vmkit(...args: string[]): Promise<CliResult> {
  return await vmkitIn(null, ...args);
}

/** Runs `vmkit netguard ARGS` with `stdin` piped in (or none); killed after 60 s. */
function vmkitIn(stdin: Uint8Array | null, ...args: string[]): Promise<CliResult> {
  return vmkitCli(["netguard", ...args], {
    timeoutMs: 60_000,
    ...(stdin === null ? {} : { stdin }),
  });
}

async function floodPcap(dir: string): Promise<{ path: string; total: number; syn: number }> {
  const trace = synthesizeTrace({
    seed: 3,
    startMs: 1_800_000_000_000,
    benignPps: 1000,
    durationMs: 1500,
    victim: "10.0.0.2",
    attack: { kind: "syn", atMs: 1000, forMs: 500, pps: 20_000 },
  });
  const w = new PcapWriter();
  trace.frames.forEach((f, i) => w.write(f, trace.tsMs[i] ?? 0));
  const path = `${dir}/flood.pcap`;
  await Deno.writeFile(path, w.bytes());
  // The flood frames are the SYNs (flags byte 0x02 at 14 + 20 + 13); benign ones carry ACK.
  const syn = trace.frames.filter((f) => f[47] === 0x02).length;
  return { path, total: trace.frames.length, syn };
}

Deno.test("vmkit netguard --help prints both subcommands and exits 0", async () => {
  const r = await vmkit("--help");
  assert.equal(r.code, 0);
  assert.match(r.stdout, /vmkit netguard watch \(--pcap FILE \| --iface IF \| --tap NAME\)/);
  assert.match(r.stdout, /vmkit netguard report FILE/);
});

Deno.test("vmkit netguard watch --pcap --json prints one event per line with the required fields", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netguard-cli-" });
  try {
    const { path: pcap } = await floodPcap(dir);
    const r = await vmkit(
      "watch",
      "--pcap",
      pcap,
      "--json",
      "--samples-pcap",
      `${dir}/samples.pcap`,
    );
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    for (const l of lines) {
      for (const k of ["ts", "event", "vm", "direction", "kind"]) {
        assert.ok(k in l, `${k} missing in ${JSON.stringify(l)}`);
      }
      assert.ok(["alert", "decision", "clear", "stats"].includes(l.event));
    }
    const alert = lines.find((l) => l.event === "alert" && l.kind === "syn_flood");
    assert.equal(alert?.vm, "host");
    assert.equal(alert?.direction, "inbound");
    assert.ok(
      alert.ts - 1_800_000_001_000 <= 100,
      `decision ${alert.ts - 1_800_000_001_000} ms after the first attack packet`,
    );
    const decision = lines.find((l) => l.event === "decision" && l.kind === "syn_flood");
    assert.equal(typeof decision?.action, "string");
    assert.ok(lines.some((l) => l.event === "clear" && l.kind === "syn_flood"));
    assert.ok(lines.some((l) => l.event === "stats"));
    const td = await new Deno.Command("tcpdump", {
      args: ["-nn", "-r", `${dir}/samples.pcap`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(td.success, "tcpdump reads the samples pcap");
    assert.match(new TextDecoder().decode(td.stdout), /> 10\.0\.0\.2\.80: Flags \[S\]/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit netguard report summarises a capture and the decisions it would cause", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netguard-cli-" });
  try {
    const { path: pcap, total, syn } = await floodPcap(dir);
    assert.ok(syn > 9000 && total - syn > 1000);
    const r = await vmkit("report", pcap);
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.stdout.includes(`pcap, ${total} packets`), r.stdout);
    assert.ok(r.stdout.includes(`tcp_syn=${syn}`));
    assert.match(r.stdout, /top ports: tcp\/80 \(/);
    assert.match(r.stdout, /ALERT syn_flood vm=host inbound/);
    const j = await vmkit("report", pcap, "--json");
    const rep = JSON.parse(j.stdout);
    assert.equal(rep.packets, total);
    assert.equal(rep.classes.tcp_syn, syn);
    assert.ok(
      rep.events.some((e: { event: string; kind: string }) =>
        e.event === "alert" && e.kind === "syn_flood"
      ),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit netguard gives clear errors on bad input", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netguard-cli-" });
  try {
    let r = await vmkit("watch");
    assert.equal(r.code, 64);
    assert.match(r.stderr, /exactly one of --pcap FILE, --iface IF, --tap NAME/);
    r = await vmkit("watch", "--pcap", `${dir}/missing.pcap`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /missing\.pcap: cannot read the file/);
    await Deno.writeFile(`${dir}/odd.pcap`, new PcapWriter(147).bytes());
    r = await vmkit("report", `${dir}/odd.pcap`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /unknown link type 147/);
    await Deno.writeTextFile(`${dir}/bad.json`, JSON.stringify({ policy: { holdMs: "soon" } }));
    r = await vmkit("report", `${dir}/odd.pcap`, "--config", `${dir}/bad.json`);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /policy\.holdMs: must be a number/);
    r = await vmkit("watch", "--pcap", "x", "--bogus");
    assert.equal(r.code, 64);
    assert.match(r.stderr, /bogus/);
    r = await vmkit("frob");
    assert.equal(r.code, 64);
    assert.match(r.stderr, /unknown subcommand 'frob'/);
    r = await vmkit("watch", "--iface", "ngnosuchif0", "--duration", "100");
    assert.equal(r.code, 1);
    assert.match(
      r.stderr,
      /packet_open\(ngnosuchif0\) failed: (No such device|Operation not permitted)/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit netguard watch --pcap - streams standard input to the same events as the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netguard-cli-" });
  try {
    const { path } = await floodPcap(dir);
    const file = await vmkit("watch", "--pcap", path, "--json");
    const piped = await vmkitIn(await Deno.readFile(path), "watch", "--pcap", "-", "--json");
    assert.equal(piped.code, 0, piped.stderr);
    assert.equal(piped.stdout, file.stdout);
    assert.match(piped.stdout, /"kind":"syn_flood"/);
    const rep = await vmkitIn(await Deno.readFile(path), "report", "-", "--json");
    assert.equal(rep.code, 0, rep.stderr);
    assert.equal(
      JSON.parse(rep.stdout).packets,
      JSON.parse((await vmkit("report", path, "--json")).stdout).packets,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit netguard on /dev/zero, a directory, a FIFO of garbage or a non-UTF-8 name stops with one line", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netguard-cli-" });
  try {
    // An endless input is streamed and refused at its first bytes, not read into memory.
    for (const sub of ["watch --pcap", "report"]) {
      const r = await vmkitIn(null, ...sub.split(" "), "/dev/zero");
      assert.equal(r.code, 1, `${sub}: ${r.stderr}`);
      assert.match(r.stderr, /\/dev\/zero: not a pcap or pcapng file \(magic 0x00000000\)/);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assert.ok(r.ms < 30_000, `${sub} /dev/zero took ${r.ms} ms`);
    }
    const d = await vmkit("report", dir);
    assert.equal(d.code, 1);
    assert.match(d.stderr, /is a directory/);
    assert.equal(d.stderr.trimEnd().split("\n").length, 1, d.stderr);
    const cfg = await vmkit("report", "/dev/null", "--config", "/dev/zero");
    assert.equal(cfg.code, 1);
    assert.match(cfg.stderr, /\/dev\/zero: is not a regular file/);
    // A FIFO is a stream: a writer's garbage is refused at the first bad record.
    const fifo = `${dir}/fifo`;
    await new Deno.Command("mkfifo", { args: [fifo] }).output();
    const writer = new Deno.Command("sh", {
      args: ["-c", `head -c 100000 /dev/urandom > ${fifo}`],
      stderr: "null",
    }).spawn();
    const f = await vmkit("watch", "--pcap", fifo);
    await writer.status;
    assert.equal(f.code, 1, f.stderr);
    assert.match(f.stderr, /not a pcap or pcapng file/);
    assert.equal(f.stderr.trimEnd().split("\n").length, 1, f.stderr);
    const bad = await vmkitNonUtf8(`${dir}/bad`, ".pcap", "netguard", "report", BAD_NAME);
    assert.equal(bad.code, 64, bad.stderr);
    assert.match(bad.stderr, /not valid UTF-8/);
    assert.equal(bad.stderr.trimEnd().split("\n").length, 1, bad.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit netguard says what is wrong with a negative number instead of calling it ambiguous", async () => {
  for (const opt of ["--duration", "--stats-interval"]) {
    const r = await vmkit("watch", "--pcap", "/dev/null", opt, "-5");
    assert.equal(r.code, 64, r.stderr);
    assert.match(r.stderr, new RegExp(`${opt} must be an integer 0 or more, got '-5'`));
    assert.doesNotMatch(r.stderr, /ambiguous/);
  }
});

Deno.test("a capture whose timestamps go backwards reports no negative duration or rate", async () => {
  const dir = await Deno.makeTempDir({ prefix: "netguard-cli-" });
  try {
    const trace = synthesizeTrace({
      seed: 9,
      startMs: 1_800_000_000_000,
      benignPps: 1000,
      durationMs: 1500,
      victim: "10.0.0.2",
      attack: { kind: "syn", atMs: 500, forMs: 500, pps: 20_000 },
    });
    const w = new PcapWriter();
    const n = trace.frames.length;
    // The second half is stamped an hour earlier than the first: a clock step back.
    trace.frames.forEach((f, i) => w.write(f, (trace.tsMs[i] ?? 0) - (i > n / 2 ? 3_600_000 : 0)));
    await Deno.writeFile(`${dir}/back.pcap`, w.bytes());
    const rep = await vmkit("report", `${dir}/back.pcap`, "--json");
    assert.equal(rep.code, 0, rep.stderr);
    const r = JSON.parse(rep.stdout);
    assert.ok(r["last-ts"] >= r["first-ts"], `span ${r["last-ts"] - r["first-ts"]}`);
    assert.ok(r["avg-pps"] >= 0, `avg-pps ${r["avg-pps"]}`);
    assert.ok(r["out-of-order"] > 0 && r["out-of-order"] < n);
    const text = await vmkit("report", `${dir}/back.pcap`);
    assert.doesNotMatch(text.stdout, /-\d+(\.\d+)? s\b|average -/);
    const watch = await vmkit("watch", "--pcap", `${dir}/back.pcap`, "--json");
    assert.equal(watch.code, 0, watch.stderr);
    const events = watch.stdout.trim().split("\n").map((l) => JSON.parse(l));
    assert.ok(events.some((e) => e.event === "alert"), "the flood is still detected");
    for (const e of events) {
      if (e.durationMs !== undefined) assert.ok(e.durationMs >= 0, JSON.stringify(e));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
