/**
 * The boot loaders hand the RSDP to the kernel (PVH `rsdp_paddr`, Linux
 * `boot_params.acpi_rsdp_addr`), and a real guest finds the tables itself:
 * by that pointer and by scanning the BIOS area, walking RSDP → XSDT →
 * FADT/MADT → DSDT with every checksum checked (tests/guests/acpi.c).
 */
import assert from "node:assert/strict";
import { readVmGenId, RSDP_ADDR, VMGENID_ADDR } from "../../vmm/acpi/mod.ts";
import {
  BootError,
  loadKernel,
  START_INFO,
  START_INFO_ADDR,
  ZERO_PAGE_ADDR,
} from "../../vmm/boot/mod.ts";
import { BP } from "../../vmm/boot/zero_page.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { FakeMemory, guest, makeElf64 } from "./boot_fake_memory.ts";

const MiB = 0x10_0000;
const GUESTS = ["guest-pvh.elf", "guest-vmlinux.elf", "guest.bzImage"] as const;

Deno.test("every boot protocol passes the RSDP address it is given, and 0 without one", async () => {
  for (const name of GUESTS) {
    const image = await guest(name);
    for (const rsdp of [RSDP_ADDR, undefined]) {
      const mem = new FakeMemory(64 * MiB);
      const plan = loadKernel(mem, image, {
        cmdline: "mode=acpi",
        ...(rsdp === undefined ? {} : { acpiRsdp: rsdp }),
      });
      const got = plan.protocol === "pvh"
        ? mem.dv(START_INFO_ADDR, START_INFO.size).getBigUint64(START_INFO.rsdpPaddr, true)
        : mem.dv(ZERO_PAGE_ADDR, 0x1000).getBigUint64(BP.acpiRsdpAddr, true);
      assert.equal(got, BigInt(rsdp ?? 0), `${name} (${plan.protocol})`);
    }
  }
});

Deno.test("a kernel segment over the reserved BIOS area, where the ACPI tables live, is refused", () => {
  const at = 0xe_0000n;
  const elf = makeElf64(at, [{
    type: 1,
    vaddr: at,
    paddr: at,
    data: new Uint8Array(64),
    memsz: 0x1000,
  }]);
  assert.throws(
    () => loadKernel(new FakeMemory(16 * MiB), elf, { cmdline: "" }),
    (e: unknown) => e instanceof BootError && /overlaps the reserved BIOS area/.test(e.message),
  );
});

/** Boots `name` with mode=acpi and 2 vCPUs; returns the serial text and the exit. */
async function bootAcpiGuest(name: string, acpi: boolean) {
  const dir = await Deno.makeTempDir({ prefix: "vmkit-acpi-boot-" });
  const serial = `${dir}/serial.log`;
  try {
    await using m = await Machine.create({
      memMiB: 32,
      vcpus: 2,
      kernel: await guest(name),
      cmdline: "mode=acpi",
      devices: defaultDeviceSpecs({
        serialOut: { path: serial },
        serialIn: false,
        memMiB: 32,
        debugExitPort: 0xf4,
      }),
      acpi,
    });
    const layout = m.acpi;
    const genId = layout?.vmgenid === undefined ? undefined : readVmGenId(m.memory, layout.vmgenid);
    await m.start();
    const exit = await m.wait();
    return { exit, text: await Deno.readTextFile(serial), layout, genId };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

for (const name of GUESTS) {
  Deno.test(`a ${name} guest with 2 vCPUs finds the RSDP both ways and walks XSDT, FADT, MADT, DSDT (needs /dev/kvm)`, async () => {
    const { exit, text, layout, genId } = await bootAcpiGuest(name, true);
    assert.equal(exit.status, 0, `${exit.reason}\n${text}`);
    const lines = text.split("\n");
    const has = (re: RegExp) => assert.ok(lines.some((l) => re.test(l)), `${re} in:\n${text}`);
    has(/^acpi rsdp boot 0xe0000 scan 0xe0000$/);
    has(/^acpi rsdp rev 2 xsdt 0x/);
    for (const sig of ["XSDT", "FACP", "APIC", "DSDT"]) has(new RegExp(`^acpi table ${sig} at 0x`));
    has(/^acpi fadt flags 0x100031 /);
    has(/^acpi madt lapic 0 apic 0 flags 1$/);
    has(/^acpi madt lapic 1 apic 1 flags 1$/);
    has(/^acpi madt ioapic 0 at 0xfec00000 gsi 0$/);
    has(/^acpi madt override irq 0 gsi 2 flags 0$/);
    has(/^acpi madt nmi uid 255 lint 1$/);
    has(/^acpi cpus 2 boot apic 0 listed$/);
    has(/^acpi ok$/);
    assert.ok(layout?.vmgenid, "the machine reports its generation id page");
    assert.equal(layout.vmgenid.addr, VMGENID_ADDR);
    assert.ok(genId !== undefined && genId.some((b) => b !== 0), "a random id was written");
  });
}

Deno.test("with acpi: false the guest finds no RSDP (needs /dev/kvm)", async () => {
  const { exit, text, layout } = await bootAcpiGuest("guest-pvh.elf", false);
  assert.equal(layout, undefined);
  assert.match(text, /^acpi rsdp boot 0x0 scan 0x0$/m);
  assert.match(text, /acpi bad: no RSDP in the BIOS area/);
  assert.equal(exit.status, (3 << 1) | 1, exit.reason);
});
