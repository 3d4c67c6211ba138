import assert from "node:assert/strict";
import {
  type DecisionEvent,
  LiveReader,
  NetGuard,
  type NetguardEvent,
  parseConfig,
  readCaptureFile,
  replayCapture,
  watchInterface,
  watchTap,
} from "../../netguard/mod.ts";
import {
  Netns,
  ProcessVm,
  sleep,
  startTcpdump,
  stopProcess,
  vethPair,
  waitFor,
} from "./helpers.ts";

const CLI = new URL("../../cli/main.ts", import.meta.url).pathname;

/** Only the attack kind under test is enabled, well below the flood rate and far above background. */
function floodConfig(kind: "syn" | "udp" | "icmp") {
  return parseConfig({
    thresholds: {
      pps: 0,
      bps: 0,
      flows: 0,
      rstPps: 0,
      fragPps: 0,
      synPps: kind === "syn" ? 500 : 0,
      udpPps: kind === "udp" ? 500 : 0,
      icmpPps: kind === "icmp" ? 500 : 0,
    },
    detector: { adaptive: { enabled: false } },
    policy: { holdMs: 500 },
  });
}

function actions(events: NetguardEvent[]): string[] {
  return events
    .filter((e): e is DecisionEvent => e.event === "decision")
    .map((e) => `${e.action}:${e.kind}:${e.targets.join(",")}`);
}

const HPING_ARGS: Record<"syn" | "udp" | "icmp", string[]> = {
  syn: ["-S", "-p", "80"],
  udp: ["-2", "-p", "53"],
  icmp: ["-1"],
};

async function tapFloodScenario(kind: "syn" | "udp" | "icmp"): Promise<void> {
  const ns = await Netns.create(kind);
  const dir = await Deno.makeTempDir({ prefix: "netguard-live-" });
  const victim = new ProcessVm();
  const bystander = new ProcessVm();
  let reader: LiveReader | null = null;
  let tcpdump: Deno.ChildProcess | null = null;
  let watching: Promise<void> | null = null;
  try {
    reader = await LiveReader.openTap("ngtap0", { netns: ns.name });
    await ns.ip("link set ngtap0 up");
    await ns.ip("addr add 10.77.0.1/24 dev ngtap0");
    // The "VM" behind the TAP answers no ARP: a static neighbour lets the kernel send to it.
    await ns.ip("neigh add 10.77.0.2 lladdr 02:00:00:00:00:02 dev ngtap0");
    const guard = new NetGuard(floodConfig(kind));
    const live: NetguardEvent[] = [];
    guard.onEvent((e) => live.push(e));
    guard.registerVm("victim", victim);
    guard.registerVm("bystander", bystander);
    const pcap = `${dir}/${kind}.pcap`;
    tcpdump = await startTcpdump(ns, "ngtap0", pcap);
    watching = watchTap(guard, reader, "victim");
    const hping = await ns.exec(
      [
        "timeout",
        "20",
        "hping3",
        ...HPING_ARGS[kind],
        "-c",
        "3000",
        "-i",
        "u200",
        "-q",
        "10.77.0.2",
      ],
      true,
    );
    assert.ok(hping.code === 0 || hping.code === 1, `hping3 failed: ${hping.stderr}`);
    assert.ok(
      await waitFor(() => victim.calls.includes("pause"), 3000),
      `no suspension: ${actions(live)}`,
    );
    assert.ok(guard.suspended().includes("victim") || victim.calls.includes("resume"));
    assert.ok(
      await waitFor(() => victim.calls.includes("resume"), 5000),
      `no resume: ${actions(live)}`,
    );
    await guard.settled();
    assert.deepEqual(victim.calls, ["pause", "resume"]);
    assert.deepEqual(bystander.calls, [], "the other VM was never touched");
    await sleep(200);
    await stopProcess(tcpdump);
    tcpdump = null;
    const kindName = `${kind}_flood`;
    assert.deepEqual(actions(live), [`suspend:${kindName}:victim`, `resume:${kindName}:victim`]);
    // The tcpdump capture of the same traffic, replayed, gives the same decisions.
    const replay = new NetGuard(floodConfig(kind));
    const replayed: NetguardEvent[] = [];
    replay.onEvent((e) => replayed.push(e));
    replay.registerVm("victim", {
      pause: () => Promise.resolve(),
      resume: () => Promise.resolve(),
    });
    const cap = await readCaptureFile(pcap);
    assert.ok(cap.count >= 2500, `tcpdump captured ${cap.count} frames`);
    replayCapture(replay, cap, { vm: "victim", iface: "ngtap0" });
    assert.deepEqual(actions(replayed), actions(live));
  } finally {
    if (tcpdump !== null) await stopProcess(tcpdump);
    if (reader !== null) await reader.close();
    if (watching !== null) await watching;
    await victim.close();
    await bystander.close();
    await ns.delete();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("an hping3 SYN flood through a TAP suspends only the attacked VM, and its pcap replays to the same decisions (root, netns)", () =>
  tapFloodScenario("syn"));

Deno.test("an hping3 UDP flood through a TAP suspends only the attacked VM, and its pcap replays to the same decisions (root, netns)", () =>
  tapFloodScenario("udp"));

Deno.test("an hping3 ICMP flood through a TAP suspends only the attacked VM, and its pcap replays to the same decisions (root, netns)", () =>
  tapFloodScenario("icmp"));

const HTTP_SERVER = `
Deno.serve({ hostname: "10.78.0.2", port: 8080, onListen: () => console.log("ready") },
  () => new Response("hello from vmkit netguard test\\n"));
`;

Deno.test("benign iperf3 bulk TCP and HTTP to a Deno server over a veth raise no suspension, and a SYN flood does (root, netns, AF_PACKET)", async () => {
  const client = await Netns.create("c");
  const server = await Netns.create("s");
  const dir = await Deno.makeTempDir({ prefix: "netguard-veth-" });
  let reader: LiveReader | null = null;
  let watching: Promise<void> | null = null;
  const children: Deno.ChildProcess[] = [];
  try {
    await vethPair(client, server, "ngva", "ngvb", "10.78.0");
    reader = await LiveReader.openInterface("ngvb", { netns: server.name });
    const guard = new NetGuard(parseConfig({
      thresholds: { synPps: 1000, udpPps: 1000, icmpPps: 1000 },
      policy: { holdMs: 300 },
      vms: [{ id: "server", addresses: ["10.78.0.2"] }],
    }));
    const events: NetguardEvent[] = [];
    guard.onEvent((e) => events.push(e));
    const vm = { calls: [] as string[] };
    guard.registerVm("server", {
      pause: () => Promise.resolve(void vm.calls.push("pause")),
      resume: () => Promise.resolve(void vm.calls.push("resume")),
    });
    watching = watchInterface(guard, reader);

    // Benign: a Deno HTTP server answering 150 requests, then iperf3 bulk TCP.
    await Deno.writeTextFile(`${dir}/server.ts`, HTTP_SERVER);
    const http = server.spawn([Deno.execPath(), "run", "--allow-net", `${dir}/server.ts`]);
    children.push(http);
    const out = http.stdout.getReader();
    const first = await out.read();
    out.releaseLock();
    void http.stdout.pipeTo(new WritableStream());
    void http.stderr.pipeTo(new WritableStream());
    assert.match(new TextDecoder().decode(first.value), /ready/);
    const wget = await client.exec([
      "sh",
      "-c",
      "ok=0; for i in $(seq 150); do busybox wget -q -O - http://10.78.0.2:8080/ >/dev/null && ok=$((ok+1)); done; echo $ok",
    ]);
    assert.equal(wget.stdout.trim(), "150", "every HTTP request was answered");
    const iperfServer = server.spawn(["iperf3", "-s", "-1", "-B", "10.78.0.2"]);
    children.push(iperfServer);
    void iperfServer.stdout.pipeTo(new WritableStream());
    void iperfServer.stderr.pipeTo(new WritableStream());
    await sleep(300);
    const iperf = await client.exec(["iperf3", "-c", "10.78.0.2", "-t", "2", "-b", "300M", "-J"]);
    const sent = JSON.parse(iperf.stdout).end.sum_received.bytes as number;
    assert.ok(sent > 10_000_000, `iperf3 moved ${sent} bytes`);
    await sleep(200);
    const inbound = guard.monitorsOf("server").find((m) => m.direction === "inbound");
    const outbound = guard.monitorsOf("server").find((m) => m.direction === "outbound");
    assert.ok((inbound?.totals[0] ?? 0) > 1000, "netguard saw the benign traffic to the server");
    assert.ok((outbound?.totals[0] ?? 0) > 500, "and the traffic from it");
    assert.deepEqual(vm.calls, [], `benign traffic suspended the VM: ${actions(events)}`);
    assert.equal(actions(events).filter((a) => a.startsWith("suspend")).length, 0);

    // Attack: a SYN flood to the same server port is caught on the same interface.
    await client.exec([
      "timeout",
      "20",
      "hping3",
      "-S",
      "-p",
      "8080",
      "-c",
      "2000",
      "-i",
      "u200",
      "-q",
      "10.78.0.2",
    ], true);
    assert.ok(
      await waitFor(() => vm.calls.includes("pause"), 3000),
      `no suspension: ${actions(events)}`,
    );
    const d = events.find((e): e is DecisionEvent =>
      e.event === "decision" && e.action === "suspend"
    );
    assert.equal(d?.kind, "syn_flood");
    assert.equal(d?.vm, "server");
    assert.equal(d?.direction, "inbound");
  } finally {
    for (const c of children) await stopProcess(c);
    if (reader !== null) await reader.close();
    if (watching !== null) await watching;
    await client.delete();
    await server.delete();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit netguard watch --tap prints JSON alerts and decisions as a flood happens (root, netns)", async () => {
  const ns = await Netns.create("cli");
  const dir = await Deno.makeTempDir({ prefix: "netguard-cli-" });
  let cli: Deno.ChildProcess | null = null;
  try {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify({ thresholds: { synPps: 500 } }));
    cli = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        CLI,
        "netguard",
        "watch",
        "--tap",
        "ngtap1",
        "--netns",
        ns.name,
        "--vm",
        "guest",
        "--config",
        `${dir}/config.json`,
        "--json",
        "--duration",
        "3500",
        "--stats-interval",
        "1000",
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const errReader = cli.stderr.getReader();
    let err = "";
    while (!err.includes("watching")) {
      const { value, done } = await errReader.read();
      if (done) break;
      err += new TextDecoder().decode(value);
    }
    errReader.releaseLock();
    void cli.stderr.pipeTo(new WritableStream());
    const stdout = new Response(cli.stdout).text();
    assert.match(err, /watching tap ngtap1/);
    await ns.ip("link set ngtap1 up");
    await ns.ip("addr add 10.79.0.1/24 dev ngtap1");
    await ns.ip("neigh add 10.79.0.2 lladdr 02:00:00:00:00:02 dev ngtap1");
    await ns.exec([
      "timeout",
      "20",
      "hping3",
      "-S",
      "-p",
      "443",
      "-c",
      "2000",
      "-i",
      "u200",
      "-q",
      "10.79.0.2",
    ], true);
    const status = await cli.status;
    cli = null;
    assert.equal(status.code, 0);
    const lines = (await stdout).trim().split("\n").map((l) => JSON.parse(l));
    for (const l of lines) {
      for (const k of ["ts", "event", "vm", "direction", "kind"]) {
        assert.ok(k in l, `${k} in ${JSON.stringify(l)}`);
      }
    }
    const alert = lines.find((l) => l.event === "alert" && l.kind === "syn_flood");
    assert.equal(alert?.vm, "guest");
    assert.equal(alert?.direction, "inbound");
    const decision = lines.find((l) => l.event === "decision" && l.kind === "syn_flood");
    assert.equal(decision?.action, "alert", "no VM to pause from the CLI: reported only");
    assert.ok(lines.some((l) => l.event === "stats"));
  } finally {
    if (cli !== null) await stopProcess(cli);
    await ns.delete();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a watch opened while its interface is down sees the frames once it comes up, and after it goes down and up again (root, netns, AF_PACKET)", async () => {
  const client = await Netns.create("dc");
  const server = await Netns.create("ds");
  let reader: LiveReader | null = null;
  let loop: Promise<void> | null = null;
  try {
    await vethPair(client, server, "ngda", "ngdb", "10.79.0", false);
    // Opened while ngdb is down: the kernel marks the socket ENETDOWN, which ended the watch.
    reader = await LiveReader.openInterface("ngdb", { netns: server.name, pollMs: 20 });
    let frames = 0;
    loop = reader.run(() => void frames++);
    await sleep(100);
    await server.ip("link set ngdb up");
    const ping = () => client.exec(["ping", "-c", "3", "-i", "0.2", "-W", "1", "10.79.0.2"], true);
    await ping();
    assert.ok(
      await waitFor(() => frames > 0, 5000),
      "frames on the interface brought up after the watch began",
    );
    const before = frames;
    await server.ip("link set ngdb down");
    await sleep(100);
    await server.ip("link set ngdb up");
    await ping();
    assert.ok(
      await waitFor(() => frames > before, 5000),
      "frames after the interface went down and up again",
    );
  } finally {
    await reader?.close();
    await loop?.catch(() => {});
    await client.delete();
    await server.delete();
  }
});
