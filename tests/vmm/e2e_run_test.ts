import assert from "node:assert/strict";
import { guest, vmkit } from "./run_helpers.ts";

const FORMS = ["guest-pvh.elf", "guest-vmlinux.elf", "guest.bzImage"] as const;

for (const form of FORMS) {
  Deno.test(`a ${form} guest sees its command line and the e820 map with the MMIO gap (needs /dev/kvm)`, async () => {
    const r = await vmkit([
      "run",
      "--kernel",
      guest(form),
      "--mem",
      "3584",
      "--cmdline",
      "mode=info hello=world",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^cmdline=mode=info hello=world$/m);
    const mem = [...r.stdout.matchAll(/^mem (?:0x)?([0-9a-f]+) (?:0x)?([0-9a-f]+) (\d+)$/gm)].map((
      m,
    ) => ({
      start: parseInt(m[1] ?? "", 16),
      end: parseInt(m[2] ?? "", 16),
      type: Number(m[3]),
    }));
    const ram = mem.filter((m) => m.type === 1);
    // Low RAM below the EBDA, RAM from 1 MiB to the 3 GiB gap, and the rest above 4 GiB.
    assert.deepEqual(ram[0], { start: 0, end: 0x9fc00, type: 1 });
    assert.ok(ram.some((m) => m.start === 0x100000 && m.end === 0xc000_0000), r.stdout);
    assert.ok(ram.some((m) => m.start === 0x1_0000_0000 && m.end === 0x1_2000_0000), r.stdout);
    const total = ram.reduce((n, m) => n + (m.end - m.start), 0);
    assert.equal(total, 3584 * 2 ** 20 - (0x100000 - 0x9fc00));
    assert.ok(!mem.some((m) => m.type === 1 && m.start < 0x1_0000_0000 && m.end > 0xc000_0000));
  });
}

Deno.test("a guest passes an initrd through the boot protocol intact (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const initrd = new Uint8Array(10_000).map((_, i) => (i * 7 + 3) & 0xff);
    await Deno.writeFile(`${dir}/initrd`, initrd);
    const sum = initrd.reduce((n, b) => n + b, 0);
    for (const form of FORMS) {
      const r = await vmkit([
        "run",
        "--kernel",
        guest(form),
        "--initrd",
        `${dir}/initrd`,
        "--cmdline",
        "mode=info",
      ]);
      assert.equal(r.code, 0, r.stderr);
      const m = r.stdout.match(
        /^initrd (?:0x)?([0-9a-f]+) (?:0x)?([0-9a-f]+) sum (?:0x)?([0-9a-f]+)$/m,
      );
      assert.ok(m, `${form}: no initrd line in ${r.stdout}`);
      assert.equal(parseInt(m[2] ?? "", 16), initrd.length);
      assert.equal(parseInt(m[3] ?? "", 16), sum);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serial input reaches the guest and its echo comes back (needs /dev/kvm)", async () => {
  const r = await vmkit(["run", "--kernel", guest("guest-pvh.elf"), "--cmdline", "mode=echo"], {
    stdin: "hello vmkit\nsecond line\nquit\n",
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^echo: hello vmkit$/m);
  assert.match(r.stdout, /^echo: second line$/m);
  assert.match(r.stdout, /^bye$/m);
});

Deno.test("two and three vCPUs all come up and run (needs /dev/kvm)", async () => {
  for (const n of [2, 3]) {
    const r = await vmkit([
      "run",
      "--kernel",
      guest("guest-pvh.elf"),
      "--vcpus",
      String(n),
      "--cmdline",
      `mode=smp:${n}`,
      "--debug-exit",
      "0xf4",
    ], { timeoutMs: 60_000 });
    assert.equal(r.code, 0, `${r.stderr}\n${r.stdout}`);
    assert.match(r.stdout, new RegExp(`^smp ok ${n}$`, "m"));
    for (let k = 1; k < n; k++) assert.match(r.stdout, new RegExp(`^cpu ${k} up$`, "m"));
  }
});

Deno.test("guest power-off, debug-exit and triple fault give their exit statuses (needs /dev/kvm)", async () => {
  const reset = await vmkit([
    "run",
    "--kernel",
    guest("guest-vmlinux.elf"),
    "--cmdline",
    "mode=reset",
  ]);
  assert.equal(reset.code, 0, reset.stderr);
  for (const v of [0, 3, 42]) {
    const r = await vmkit([
      "run",
      "--kernel",
      guest("guest-pvh.elf"),
      "--cmdline",
      `mode=exit:${v}`,
      "--debug-exit",
      "0xf4",
    ]);
    assert.equal(r.code, (v << 1) | 1, r.stderr);
  }
  const triple = await vmkit([
    "run",
    "--kernel",
    guest("guest-pvh.elf"),
    "--cmdline",
    "mode=triple",
  ]);
  assert.notEqual(triple.code, 0);
  assert.match(triple.stderr, /^vmkit run: .*(shutdown|triple)/m);
  assert.equal(triple.stderr.trim().split("\n").length, 1, triple.stderr);
});

Deno.test("bad kernels and memory sizes get a one-line error and a non-zero exit", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const image = await Deno.readFile(guest("guest-vmlinux.elf"));
    await Deno.writeFile(`${dir}/truncated`, image.subarray(0, Math.floor(image.length / 2)));
    await Deno.writeFile(
      `${dir}/random`,
      new Uint8Array(4096).map((_, i) => (i * 131 + 17) & 0xff),
    );
    await Deno.writeFile(`${dir}/empty`, new Uint8Array(0));
    const cases: Array<[string[], RegExp]> = [
      [["--kernel", `${dir}/missing`], /missing|not found|no such/i],
      [["--kernel", `${dir}/truncated`], /truncated/i],
      [["--kernel", `${dir}/random`], /not a kernel/i],
      [["--kernel", `${dir}/empty`], /not a kernel|empty|truncated/i],
      [["--kernel", guest("guest-vmlinux.elf"), "--mem", "1"], /too small/i],
      [["--kernel", guest("guest-vmlinux.elf"), "--mem", "1000000"], /mem/i],
      [["--kernel", guest("guest-vmlinux.elf"), "--vcpus", "0"], /vcpus/i],
      [["--kernel", guest("guest-vmlinux.elf"), "--bogus"], /bogus/i],
    ];
    for (const [args, pattern] of cases) {
      const r = await vmkit(["run", ...args]);
      assert.notEqual(r.code, 0, `${args.join(" ")}: exited 0`);
      assert.match(r.stderr, pattern, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stderr.trim().split("\n").length, 1, `${args.join(" ")}: ${r.stderr}`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
