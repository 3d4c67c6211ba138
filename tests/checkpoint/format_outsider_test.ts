/**
 * checkpoint/FORMAT.md as an outsider reads it: a reader written from that
 * document alone (its own CRC32C, no import of checkpoint/) takes a
 * checkpoint vmkit wrote, checks every CRC the document lists, walks the page
 * map, and finds the paused guest's RAM in the DATA pages and zeros behind
 * the ZERO ones.
 */

import assert from "node:assert/strict";
import { apiRequest, startApiServer, VmController } from "../../vmm/api/mod.ts";
import { machineApiVm } from "../../vmm/api/launch.ts";
import { guestMachine } from "./helpers.ts";

/** CRC32C (Castagnoli, reflected 0x82f63b78, init and final XOR 0xffffffff), bit by bit. */
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

function crc32c(b: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = (CRC_TABLE[(c ^ (b[i] ?? 0)) & 0xff] ?? 0) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const ascii = (b: Uint8Array) => new TextDecoder().decode(b);

interface Read {
  memBytes: number;
  sections: Map<number, Uint8Array>;
  memory: Uint8Array;
  pages: Array<{ guestAddr: number; size: number; kinds: number[] }>;
}

/** Reads `file` (and `mem`, the external memory image, when the flags say so) per FORMAT.md. */
function readCheckpoint(file: Uint8Array, mem?: Uint8Array): Read {
  const v = new DataView(file.buffer, file.byteOffset, file.byteLength);
  assert.equal(crc32c(new TextEncoder().encode("123456789")), 0xe3069283, "the document's check");
  assert.equal(ascii(file.subarray(0, 8)), "VMKITCKP");
  assert.equal(v.getUint32(8, true), 1, "version");
  const flags = v.getUint32(12, true);
  assert.equal(v.getUint32(4092, true), crc32c(file.subarray(0, 4092)), "header CRC");
  const memBytes = Number(v.getBigUint64(48, true));
  const memOffset = Number(v.getBigUint64(56, true));
  const tableOffset = Number(v.getBigUint64(64, true));
  const count = v.getUint32(72, true);
  assert.ok(count <= 64);
  const table = file.subarray(tableOffset, tableOffset + 32 * count);
  assert.equal(v.getUint32(76, true), crc32c(table), "section table CRC");
  // Commit record.
  const end = file.length - 64;
  assert.equal(ascii(file.subarray(end, end + 8)), "VMKITEND");
  assert.equal(Number(v.getBigUint64(end + 8, true)), file.length);
  assert.deepEqual(file.subarray(end + 16, end + 32), file.subarray(16, 32), "same id");
  assert.equal(v.getUint32(end + 32, true), v.getUint32(4092, true));
  assert.equal(v.getUint32(end + 36, true), v.getUint32(76, true));
  assert.equal(v.getUint32(end + 60, true), crc32c(file.subarray(end, end + 60)), "commit CRC");
  const sections = new Map<number, Uint8Array>();
  for (let i = 0; i < count; i++) {
    const e = tableOffset + 32 * i;
    const kind = v.getUint32(e, true);
    const off = Number(v.getBigUint64(e + 8, true));
    const len = Number(v.getBigUint64(e + 16, true));
    const body = file.subarray(off, off + len);
    assert.ok(!sections.has(kind), `kind ${kind} once`);
    if (kind !== 9) {
      assert.equal(off % 8, 0, `section ${kind} 8-byte aligned`);
      assert.equal(v.getUint32(e + 24, true), crc32c(body), `section ${kind} CRC`);
    }
    sections.set(kind, body);
  }
  const external = (flags & 2) !== 0;
  assert.equal(memOffset, external ? 0 : 4096);
  const memory = external ? mem ?? new Uint8Array() : file.subarray(4096, 4096 + memBytes);
  assert.equal(memory.length, memBytes, "memory image length");
  const map = sections.get(4);
  assert.ok(map !== undefined, "page map");
  const m = new DataView(map.buffer, map.byteOffset, map.byteLength);
  const pages: Read["pages"] = [];
  let o = 4;
  for (let r = m.getUint32(0, true); r > 0; r--) {
    const guestAddr = Number(m.getBigUint64(o, true));
    const size = Number(m.getBigUint64(o + 8, true));
    let runs = m.getUint32(o + 16, true);
    o += 20;
    const kinds: number[] = [];
    for (; runs > 0; runs--, o += 8) {
      for (let n = m.getUint32(o + 4, true); n > 0; n--) kinds.push(m.getUint32(o, true));
    }
    assert.equal(kinds.length * 4096, size, "the runs cover the region exactly");
    pages.push({ guestAddr, size, kinds });
  }
  return { memBytes, sections, memory, pages };
}

Deno.test("a reader written from FORMAT.md alone reads a vmkit checkpoint: every CRC holds and the pages are the paused guest's RAM (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-fmt-" });
  const sock = `${dir}/api.sock`;
  try {
    await using m = await guestMachine(32, "mode=spin");
    const server = await startApiServer(sock, new VmController({ vm: machineApiVm(m) }));
    try {
      await apiRequest(sock, "PATCH", "/vm", { state: "Paused" });
      m.memory.write(12 << 20, new Uint8Array(3 * 4096).fill(0x3c));
      const ram = m.memory.read(0, 32 << 20);
      for (const external of [false, true]) {
        const path = `${dir}/vm${external ? "-ext" : ""}.ckpt`;
        const r = await apiRequest(sock, "PUT", "/snapshot/create", {
          snapshot_path: path,
          ...(external ? { mem_file_path: `${dir}/vm.mem` } : {}),
        });
        assert.equal(r.status, 204, JSON.stringify(r.body));
        const ck = readCheckpoint(
          await Deno.readFile(path),
          external ? await Deno.readFile(`${dir}/vm.mem`) : undefined,
        );
        assert.equal(ck.memBytes, 32 << 20);
        const config = JSON.parse(ascii(ck.sections.get(1) ?? new Uint8Array()));
        assert.equal(config.memBytes, ck.memBytes);
        assert.deepEqual(
          config.regions,
          ck.pages.map((p) => ({ guestAddr: p.guestAddr, size: p.size })),
        );
        const crcs = ck.sections.get(5) ?? new Uint8Array();
        const cv = new DataView(crcs.buffer, crcs.byteOffset, crcs.byteLength);
        let data = 0, zero = 0, at = 0;
        for (const region of ck.pages) {
          for (const [p, kind] of region.kinds.entries()) {
            const page = ck.memory.subarray(at + p * 4096, at + (p + 1) * 4096);
            const gpa = region.guestAddr + p * 4096;
            const want = ram.subarray(gpa, gpa + 4096);
            if (kind === 2) {
              assert.equal(crc32c(page), cv.getUint32(4 * data, true), `page checksum at ${gpa}`);
              assert.deepEqual(page, want, `DATA page at 0x${gpa.toString(16)}`);
              data++;
            } else {
              assert.equal(kind, 1, "a full checkpoint has DATA and ZERO pages only");
              assert.ok(want.every((b) => b === 0), `ZERO page at 0x${gpa.toString(16)}`);
              zero++;
            }
          }
          at += region.size;
        }
        assert.equal(crcs.length, 4 * data, "one checksum per DATA page");
        assert.ok(data >= 3 && zero > 0, `${data} DATA, ${zero} ZERO pages`);
      }
    } finally {
      await server.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
