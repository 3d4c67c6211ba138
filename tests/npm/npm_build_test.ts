import assert from "node:assert/strict";
import ts from "typescript";
import { buildNpm } from "../../npm/build.ts";
import { LINKTYPE_ETHERNET, PcapWriter } from "../../netguard/mod.ts";
import { buildFrame } from "../../netguard/synth.ts";
import { VERSION } from "../../version.ts";

async function run(cmd: string, args: string[], cwd: string) {
  const o = await new Deno.Command(cmd, { args, cwd, stdout: "piped", stderr: "piped" }).output();
  const dec = new TextDecoder();
  return { code: o.code, stdout: dec.decode(o.stdout), stderr: dec.decode(o.stderr) };
}

const NODE_SCRIPT = `
import { cow, VERSION } from "@vmkit/vmkit";
import { checkImage, QcowError } from "@vmkit/vmkit/cow";
import { parseIscsiName, parseInquiry, parseSuiType } from "@vmkit/vmkit/san";
import { defaultConfig, readCapture, readCaptureFile, summarizeCapture } from "@vmkit/vmkit/netguard";
import { decodeBody, encodeFrame, MsgType } from "@vmkit/vmkit/dsm";
import { readFileSync } from "node:fs";

const out = { version: VERSION, sameCow: cow.checkImage === checkImage };
const clean = checkImage("clean.qcow2");
out.clean = { errors: clean.errors.length, leaks: clean.leaks, total: clean.totalClusters };
try {
  checkImage("notes.txt");
  out.notQcow = "no error";
} catch (err) {
  out.notQcow = { isQcowError: err instanceof QcowError, message: err.message };
}
out.iqn = parseIscsiName("iqn.2024-01.dev.vmkit:vm-1").name;
try {
  parseSuiType("fcoe");
  out.badType = "no error";
} catch (err) {
  out.badType = err.name;
}
const inq = new Uint8Array(36);
inq.set(new TextEncoder().encode("VMKIT   DISK            0001"), 8);
out.inquiry = parseInquiry(inq);
const cap = readCapture(new Uint8Array(readFileSync("syn.pcap")), "syn.pcap");
const report = summarizeCapture(cap, defaultConfig(), 3);
out.pcap = { packets: report.packets, syn: report.classes.tcp_syn ?? 0,
  alerts: report.events.filter((e) => e.event === "alert").map((e) => e.kind) };
const frame = encodeFrame({ type: MsgType.READ, region: 1, block: 7, a: 3, b: 4, data: null });
const body = frame.subarray(4);
out.dsm = decodeBody(body);
try {
  await readCaptureFile("syn.pcap");
  out.denoOnly = "no error";
} catch (err) {
  out.denoOnly = err.message;
}
console.log(JSON.stringify(out));
`;

const CONSUMER = `
import { checkImage, type CheckResult } from "@vmkit/vmkit/cow";
import { MsgType, type Message } from "@vmkit/vmkit/dsm";
import { NetGuard, defaultConfig } from "@vmkit/vmkit/netguard";
import { parseInquiry } from "@vmkit/vmkit/san";
const r: CheckResult = checkImage("x.qcow2");
const m: Message = { type: MsgType.READ, region: 0, block: 0, a: 0, b: 0, data: null };
const g = new NetGuard(defaultConfig());
const vendor: string = parseInquiry(new Uint8Array(36)).vendor;
export { g, m, r, vendor };
`;

Deno.test("deno task build:npm writes a package whose Deno-free parts run under Node and type-check", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-npm-" });
  try {
    const pkg = await buildNpm(`${dir}/node_modules/@vmkit/vmkit`);
    const manifest = JSON.parse(await Deno.readTextFile(`${pkg}/package.json`));
    assert.equal(manifest.version, VERSION);
    assert.deepEqual(Object.keys(manifest.exports), [".", "./cow", "./san", "./netguard", "./dsm"]);
    for (const e of Object.values(manifest.exports) as Array<{ types: string; import: string }>) {
      await Deno.stat(`${pkg}/${e.types}`);
      await Deno.stat(`${pkg}/${e.import}`);
    }

    const q = await run("qemu-img", ["create", "-q", "-f", "qcow2", "clean.qcow2", "4M"], dir);
    assert.equal(q.code, 0, q.stderr);
    await Deno.writeTextFile(`${dir}/notes.txt`, "not an image\n".repeat(10));
    const w = new PcapWriter(LINKTYPE_ETHERNET);
    for (let i = 0; i < 3000; i++) {
      const frame = buildFrame({
        src: `10.0.${(i >> 8) & 255}.${i & 255}`,
        dst: "10.0.0.2",
        proto: "tcp",
        sport: 1024 + (i % 50000),
        dport: 80,
      });
      w.write(frame, 1_700_000_000_000 + i / 10);
    }
    await Deno.writeFile(`${dir}/syn.pcap`, w.bytes());

    await Deno.writeTextFile(`${dir}/check.mjs`, NODE_SCRIPT);
    const r = await run("node", ["check.mjs"], dir);
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.version, VERSION);
    assert.equal(out.sameCow, true);
    assert.deepEqual(out.clean, { errors: 0, leaks: 0, total: 64 });
    assert.equal(out.notQcow.isQcowError, true);
    assert.match(out.notQcow.message, /not a qcow2 image/);
    assert.equal(out.iqn, "iqn.2024-01.dev.vmkit:vm-1");
    assert.equal(out.badType, "SuiFormatError");
    assert.equal(out.inquiry.vendor, "VMKIT");
    assert.equal(out.inquiry.product, "DISK");
    assert.equal(out.pcap.packets, 3000);
    assert.equal(out.pcap.syn, 3000);
    assert.ok(out.pcap.alerts.includes("syn_flood"), JSON.stringify(out.pcap));
    assert.deepEqual(out.dsm, { type: 1, region: 1, block: 7, a: 3, b: 4, data: null });
    assert.match(out.denoOnly, /vmkit: Deno\.[a-zA-Z]+ requires Deno/);

    // The declarations resolve through package.json "exports" and type-check a consumer.
    await Deno.writeTextFile(`${dir}/consumer.ts`, CONSUMER);
    const program = ts.createProgram([`${dir}/consumer.ts`], {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      strict: true,
      noEmit: true,
      skipLibCheck: false,
      lib: ["lib.es2022.d.ts", "lib.esnext.disposable.d.ts", "lib.dom.d.ts"],
      types: [],
    });
    const diags = ts.getPreEmitDiagnostics(program).map((d) =>
      `${d.file?.fileName ?? ""}: ${ts.flattenDiagnosticMessageText(d.messageText, " ")}`
    );
    assert.deepEqual(diags, []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
