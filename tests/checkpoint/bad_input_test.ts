import assert from "node:assert/strict";
import { crc32c, openUffdShim } from "../../native/uffd_ffi.ts";
import { Checkpointer } from "../../checkpoint/live.ts";
import { CheckpointError } from "../../checkpoint/errors.ts";
import { verifyCheckpoint } from "../../checkpoint/tools.ts";
import {
  COMMIT_BYTES,
  decodeHeader,
  decodeTable,
  encodeCommit,
  encodeHeader,
  encodeTable,
  HEADER_BYTES,
  Section,
} from "../../checkpoint/format.ts";
import { restoreMachine } from "../../vmm/checkpoint.ts";
import { MachineTarget } from "../../vmm/checkpoint.ts";
import { seqMachine, sleep } from "./helpers.ts";

const crc = (b: Uint8Array) => crc32c(b);

/** Applies `edit` to section `kind` in place and recomputes every checksum, as a careful forger would. */
function reseal(file: Uint8Array, kind: number, edit: (b: Uint8Array) => void): Uint8Array {
  const out = file.slice();
  const h = decodeHeader(out.subarray(0, HEADER_BYTES), crc, "x");
  const table = decodeTable(
    out.subarray(h.tableOffset, h.tableOffset + h.sectionCount * 32),
    h.sectionCount,
    { start: HEADER_BYTES, end: out.length },
    "x",
  );
  const e = table.find((s) => s.kind === kind);
  if (e === undefined) throw new Error(`no section ${kind}`);
  edit(out.subarray(e.offset, e.offset + e.length));
  e.crc = crc(out.subarray(e.offset, e.offset + e.length));
  const t = encodeTable(table);
  out.set(t, h.tableOffset);
  const header = encodeHeader({ ...h, tableCrc: crc(t) }, crc);
  out.set(header, 0);
  const headerCrc = new DataView(header.buffer).getUint32(HEADER_BYTES - 4, true);
  out.set(
    encodeCommit({ fileLength: out.length, id: h.id, headerCrc, tableCrc: crc(t) }, crc),
    out.length - COMMIT_BYTES,
  );
  return out;
}

async function snapshotDir(dir: string): Promise<string> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const st = await Deno.stat(`${dir}/${e.name}`);
    names.push(`${e.name}:${st.size}:${st.mtime?.getTime()}`);
  }
  return names.sort().join("\n");
}

async function refused(dir: string, path: string, section: string, text: RegExp): Promise<void> {
  const before = await snapshotDir(dir);
  await assert.rejects(
    async () => {
      await using _r = await restoreMachine(path);
    },
    (err: unknown) => {
      assert.ok(err instanceof CheckpointError, `not a CheckpointError: ${err}`);
      assert.equal(err.section, section, err.message);
      assert.match(err.message, text);
      return true;
    },
  );
  assert.equal(await snapshotDir(dir), before, "a refused restore changed the folder");
}

Deno.test("truncated, corrupt, wrong-version and wrong-machine checkpoints are refused naming the section, and nothing is written (needs /dev/kvm)", async () => {
  await openUffdShim();
  const dir = await Deno.makeTempDir({ prefix: "vmkit-bad-" });
  const good = `${dir}/good.ckpt`;
  {
    await using m = await seqMachine(32, 256);
    await sleep(200);
    using cp = await Checkpointer.create(new MachineTarget(m));
    await (await cp.checkpoint({ path: good })).done;
  }
  const bytes = await Deno.readFile(good);

  await Deno.writeFile(`${dir}/truncated.ckpt`, bytes.subarray(0, bytes.length - 100));
  await refused(dir, `${dir}/truncated.ckpt`, "commit record", /truncated|never completed/);
  await Deno.writeFile(`${dir}/half.ckpt`, bytes.subarray(0, HEADER_BYTES + 4096));
  await refused(dir, `${dir}/half.ckpt`, "commit record", /truncated|never completed/);

  const h = decodeHeader(bytes.subarray(0, HEADER_BYTES), crc, good);
  const table = decodeTable(
    bytes.subarray(h.tableOffset, h.tableOffset + h.sectionCount * 32),
    h.sectionCount,
    { start: HEADER_BYTES, end: bytes.length },
    good,
  );
  const config = table.find((s) => s.kind === Section.CONFIG);
  assert.ok(config !== undefined);
  const flipped = bytes.slice();
  flipped[config.offset + 5] = (flipped[config.offset + 5] ?? 0) ^ 0x20;
  await Deno.writeFile(`${dir}/corrupt.ckpt`, flipped);
  await refused(dir, `${dir}/corrupt.ckpt`, "config", /checksum mismatch/);

  const headerBad = bytes.slice();
  headerBad[100] = 1;
  await Deno.writeFile(`${dir}/header.ckpt`, headerBad);
  await refused(dir, `${dir}/header.ckpt`, "header", /corrupt/);

  const v2 = bytes.slice();
  v2.set(encodeHeader({ ...h, version: 2 }, crc), 0);
  await Deno.writeFile(`${dir}/v2.ckpt`, v2);
  await refused(dir, `${dir}/v2.ckpt`, "header", /format version 2 is not supported/);

  const other = reseal(bytes, Section.CONFIG, (b) => {
    const text = new TextDecoder().decode(b).replace('"memMiB":32', '"memMiB":64');
    b.set(new TextEncoder().encode(text));
  });
  await Deno.writeFile(`${dir}/other.ckpt`, other);
  await refused(dir, `${dir}/other.ckpt`, "config", /64 MiB does not match/);

  // A flipped memory byte: restore maps lazily, verify names the page.
  const pageBad = bytes.slice();
  const at = HEADER_BYTES + 0x100_0000 + 8; // the first page the guest wrote
  pageBad[at] = (pageBad[at] ?? 0) ^ 1;
  await Deno.writeFile(`${dir}/page.ckpt`, pageBad);
  await assert.rejects(
    () => verifyCheckpoint(`${dir}/page.ckpt`),
    /guest 0x1000000 does not match its checksum/,
  );
  await verifyCheckpoint(good);
  await Deno.remove(dir, { recursive: true });
});
