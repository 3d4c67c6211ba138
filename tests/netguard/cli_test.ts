import assert from "node:assert/strict";
import { PcapWriter, synthesizeTrace } from "../../netguard/mod.ts";

const CLI = new URL("../../cli/main.ts", import.meta.url).pathname;

async function vmkit(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "netguard", ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** A pcap of 1 s of benign traffic then 0.5 s of a 20 000 pps SYN flood to 10.0.0.2. */
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
