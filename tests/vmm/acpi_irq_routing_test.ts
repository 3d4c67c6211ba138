/**
 * KVM's GSI routing agrees with the MADT: the PIT's IRQ 0 arrives on IOAPIC
 * pin 2, every other source on its own pin.
 */
import assert from "node:assert/strict";
import { IrqChip } from "../../native/kvm.ts";
import { pcIrqRoutes } from "../../vmm/acpi/mod.ts";
import { defaultDeviceSpecs } from "../../vmm/devices/mod.ts";
import { Machine } from "../../vmm/machine.ts";
import { realModeCounter, realModeLoader } from "./machine_guest.ts";

/** `struct kvm_irqchip` (chip id, pad) then `struct kvm_ioapic_state`: irr at +16. */
const IOAPIC_IRR = 8 + 16;

Deno.test("the PC routes send IRQ 0 to IOAPIC pin 2, skip the cascade, and map the rest 1:1", () => {
  const routes = pcIrqRoutes();
  const to = (gsi: number) => routes.filter((r) => r.gsi === gsi).map((r) => [r.chip, r.pin]);
  assert.deepEqual(to(0), [[0, 0], [2, 2]]);
  assert.deepEqual(to(2), [], "source 2 (the cascade, and pin 2 belongs to IRQ 0) reaches nothing");
  assert.deepEqual(to(4), [[0, 4], [2, 4]]);
  assert.deepEqual(to(9), [[1, 1], [2, 9]]);
  assert.deepEqual(to(23), [[2, 23]]);
  const ioapicPins = routes.filter((r) => r.chip === 2).map((r) => r.pin);
  assert.equal(new Set(ioapicPins).size, ioapicPins.length, "no IOAPIC pin driven twice");
  assert.equal(ioapicPins.length, 23);
  const keys = routes.map((r) => `${r.gsi}/${r.chip}`);
  assert.equal(new Set(keys).size, keys.length, "each source once per chip");
});

async function ioapicIrrAfterRaising(source: number, acpi: boolean): Promise<number> {
  await using m = await Machine.create({
    memMiB: 16,
    vcpus: 1,
    kernel: new Uint8Array(1),
    loader: realModeLoader(realModeCounter(0x2000)),
    devices: defaultDeviceSpecs({ serialOut: "none", memMiB: 16 }),
    acpi,
  });
  m.vm.irqLine(source, true);
  const chip = m.vm.getIrqchip(IrqChip.IOAPIC);
  m.vm.irqLine(source, false);
  // Every pin is masked after reset, so a raised line stays pending in irr.
  return new DataView(chip.buffer).getUint32(IOAPIC_IRR, true);
}

Deno.test("with ACPI the in-kernel IOAPIC sees source 0 on pin 2, as the MADT says (needs /dev/kvm)", async () => {
  assert.equal(await ioapicIrrAfterRaising(0, true), 1 << 2);
  assert.equal(await ioapicIrrAfterRaising(4, true), 1 << 4);
  assert.equal(await ioapicIrrAfterRaising(0, false), 1 << 0, "KVM's default routing: pin 0");
});
