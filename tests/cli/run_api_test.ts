/**
 * `vmkit run` configured as Firecracker is (issue 9.6, 9.7, 12.5): over the
 * API socket before boot (curl, as Firecracker's guide does it), from a
 * config file, with metrics and JSON logs; and its command-line checks.
 */

import assert from "node:assert/strict";
import { curl } from "../vmm/api_raw_client.ts";
import { exists, guest, vmkit, VmkitChild, waitFor } from "../vmm/run_helpers.ts";

const PVH = guest("guest-pvh.elf");

async function readOr(path: string): Promise<string> {
  return await Deno.readTextFile(path).catch(() => "");
}

Deno.test("vmkit run --api-sock waits to be configured, boots on InstanceStart, resets on SendCtrlAltDel (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  const sock = `${dir}/fc.sock`;
  const serial = `${dir}/serial.txt`;
  const metrics = `${dir}/metrics.prom`;
  const logFile = `${dir}/vm.log`;
  await using child = VmkitChild.spawn([
    "run",
    "--api-sock",
    sock,
    "--serial-out",
    serial,
    "--vm-id",
    "kbd1",
  ]);
  try {
    await waitFor("the API socket", () => exists(sock));
    const info = await curl(sock, "GET", "/");
    assert.equal(info.status, 200);
    assert.equal(JSON.parse(info.body).state, "Not started");
    assert.equal(JSON.parse(info.body).id, "kbd1");
    const put = async (path: string, body: unknown) => {
      const r = await curl(sock, "PUT", path, body);
      assert.equal(r.status, 204, `${path}: ${r.body}`);
    };
    await put("/logger", { log_path: logFile, level: "Debug" });
    await put("/metrics", { metrics_path: metrics });
    await put("/machine-config", { vcpu_count: 1, mem_size_mib: 64 });
    await put("/boot-source", { kernel_image_path: PVH, boot_args: "console=ttyS0 mode=kbd" });
    // Nothing boots before InstanceStart.
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(await readOr(serial), "");
    await put("/actions", { action_type: "InstanceStart" });
    await waitFor(
      "the guest's 'kbd ready'",
      async () => (await readOr(serial)).includes("kbd ready"),
    );
    assert.equal(JSON.parse((await curl(sock, "GET", "/")).body).state, "Running");
    const cfg = JSON.parse((await curl(sock, "GET", "/vm/config")).body);
    assert.deepEqual(cfg["boot-source"], {
      kernel_image_path: PVH,
      boot_args: "console=ttyS0 mode=kbd",
    });
    assert.equal(cfg["machine-config"].mem_size_mib, 64);
    const scrape = await curl(sock, "GET", "/metrics");
    assert.equal(scrape.status, 200);
    // The guest printed through COM1: port writes, counted on vCPU 0.
    const outs = Number(
      /^vmkit_vcpu_exits_total\{vcpu="0",reason="io_out"\} (\d+)$/m.exec(scrape.body)?.[1],
    );
    assert.ok(outs >= "kbd ready\n".length, scrape.body);
    assert.match(scrape.body, /^vmkit_api_requests_total\{method="PUT",status="204"\} [1-9]/m);
    await put("/actions", { action_type: "FlushMetrics" });
    assert.match(await Deno.readTextFile(metrics), /^# TYPE vmkit_vcpu_exits_total counter$/m);
    // Ctrl-Alt-Del: the guest reads the scan codes from the i8042 and resets through it.
    await put("/actions", { action_type: "SendCtrlAltDel" });
    const out = await child.exit();
    assert.equal(out.code, 0, out.stderr);
    const console = await Deno.readTextFile(serial);
    assert.match(console, /^kbd 1d 38 e0 53$/m); // set 1: Linux leaves translation on
    assert.match(console, /^ctrl-alt-del$/m);
    assert.equal(await exists(sock), false);
    const lines = (await Deno.readTextFile(logFile)).trimEnd().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.ok(lines.every((l) => typeof l.ts === "string" && l.vm === "kbd1"));
    assert.ok(lines.some((l) => l.msg === "vm started" && l.vcpus === 1 && l.mem_mib === 64));
    assert.ok(lines.some((l) => l.msg === "request" && l.path === "/actions" && l.status === 204));
    assert.ok(lines.some((l) => l.msg === "vm stopped" && l.exit_code === 0));
  } finally {
    await child[Symbol.asyncDispose]();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit run --config-file boots the file's VM; --metrics-path and --log-path record it (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/vm.json`;
    await Deno.writeTextFile(
      file,
      JSON.stringify({
        "boot-source": {
          kernel_image_path: PVH,
          boot_args: "mode=info from-config",
          initrd_path: null,
        },
        "machine-config": { vcpu_count: 2, mem_size_mib: 48, smt: false },
        "drives": [],
        "network-interfaces": [],
        "balloon": null,
      }),
    );
    const r = await vmkit([
      "run",
      "--config-file",
      file,
      "--metrics-path",
      `${dir}/m.prom`,
      "--log-path",
      `${dir}/log.jsonl`,
      "--level",
      "info",
      "--vm-id",
      "cfg",
      "--output",
      "json",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^cmdline=mode=info from-config$/m);
    assert.match(r.stdout, /^mem 0x100000 0x3000000 1$/m);
    assert.deepEqual(JSON.parse(r.stdout.trimEnd().split("\n").at(-1) ?? ""), {
      "status": 0,
      "reason": "guest reset via i8042",
      "exit-code": 0,
    });
    const prom = await Deno.readTextFile(`${dir}/m.prom`);
    assert.match(prom, /^vmkit_vcpu_exits_total\{vcpu="0",reason="io_out"\} \d+$/m);
    assert.match(prom, /^vmkit_pauses_total 0$/m);
    const log = (await Deno.readTextFile(`${dir}/log.jsonl`)).trimEnd().split("\n").map((l) =>
      JSON.parse(l)
    );
    assert.deepEqual(log.map((l) => l.msg), ["vm started", "vm stopped"]);
    assert.equal(log[1].reason, "guest reset via i8042");
    // Info hides Debug lines (no API here anyway); a level filter drops nothing it should keep.
    assert.ok(log.every((l) => l.level === "info" && l.vm === "cfg"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vmkit run refuses bad VM flags with a one-line usage error (exit 64)", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const img = `${dir}/disk.img`;
    await Deno.writeFile(img, new Uint8Array(512));
    await Deno.writeTextFile(
      `${dir}/vm.json`,
      JSON.stringify({ "boot-source": { kernel_image_path: PVH } }),
    );
    const cases: Array<[string[], RegExp]> = [
      [
        ["--config-file", `${dir}/vm.json`, "--kernel", PVH],
        /--kernel cannot be combined with --config-file/,
      ],
      [["--config-file", `${dir}/vm.json`, "--disk", img], /--disk cannot be combined/],
      [["--kernel", PVH, "--disk", `${img},bogus=1`], /unknown key 'bogus'/],
      [["--kernel", PVH, "--disk", `path=${img},readonly=maybe`], /readonly= must be on or off/],
      [["--kernel", PVH, "--disk", `path=${img},id=a-b`], /--disk id 'a-b' is not valid/],
      [
        ["--kernel", PVH, "--disk", "iscsi://host/iqn.x"],
        /not iscsi:\/\/HOST\[:PORT\]\/TARGET\/LUN/,
      ],
      [
        ["--kernel", PVH, "--disk", "iscsi://h/iqn.2024-01.x:t/0"],
        /needs?|give --vm-id NAME and --sui-registry/,
      ],
      [
        ["--kernel", PVH, "--disk", img, "--disk", `path=${img},id=drive0`],
        /id 'drive0' is used twice/,
      ],
      [["--kernel", PVH, "--net", "tap=t0,id=a", "--net", "tap=t1,id=a"], /id 'a' is used twice/],
      [
        ["--kernel", PVH, "--net", "mac=06:00:00:00:00:01"],
        /--net 'mac=06:00:00:00:00:01' needs tap=NAME/,
      ],
      [["--kernel", PVH, "--net", "tap=t0,mac=zz"], /not a MAC address/],
      [
        ["--kernel", PVH, "--net", "tap=t0", "--net", "tap=t0"],
        /host_dev_name 't0' is already used/,
      ],
      [["--kernel", PVH, "--netguard"], /--netguard needs at least one --net/],
      [["--kernel", PVH, "--netguard", "--vm-id", "a"], /--netguard needs at least one --net/],
      [
        ["--kernel", PVH, "--netguard", `${dir}/policy.json`],
        /--netguard needs at least one --net/,
      ],
      [["--kernel", PVH, "--netguard", "--netguard"], /--netguard is given twice/],
      [["--kernel", PVH, "--sui-registry", `${dir}/sui`], /--sui-registry needs --vm-id/],
      [["--kernel", PVH, "--level", "loud"], /--level must be one of/],
      [["--api-sock", `${dir}/s`, "--cmdline", "x"], /--initrd and --cmdline need --kernel/],
      [[], /--kernel PATH is required \(or --config-file FILE, or --api-sock PATH\)/],
    ];
    for (const [args, re] of cases) {
      const r = await vmkit(["run", ...args]);
      assert.equal(r.code, 64, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
      assert.match(r.stderr, re, args.join(" "));
    }
    const missing = await vmkit(["run", "--kernel", PVH, "--disk", `${dir}/nope.img`]);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /disk 'drive0' '.*nope\.img' cannot be opened: no such file/);
    const badFile = await vmkit(["run", "--config-file", `${dir}/disk.img`]);
    assert.equal(badFile.code, 1);
    assert.match(badFile.stderr, /config file '.*disk\.img' is not JSON/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function rssBytes(pid: number): Promise<number> {
  const status = await Deno.readTextFile(`/proc/${pid}/status`);
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1]) * 1024;
}

Deno.test("a running VMM's resident memory stays flat under a flood of 1 MiB chunked bodies (needs /dev/kvm)", async () => {
  const dir = await Deno.makeTempDir();
  const sock = `${dir}/fc.sock`;
  await using child = VmkitChild.spawn([
    "run",
    "--kernel",
    PVH,
    "--cmdline",
    "mode=spin",
    "--mem",
    "32",
    "--api-sock",
    sock,
    "--serial-out",
    `${dir}/serial.txt`,
  ]);
  try {
    await waitFor("the API socket", () => exists(sock));
    await new Promise((r) => setTimeout(r, 500)); // let the VMM settle
    const before = await rssBytes(child.child.pid);
    const chunk = new Uint8Array(1024 * 1024 + 12);
    const head = new TextEncoder().encode(`${(1024 * 1024).toString(16)}\r\n`);
    chunk.set(head);
    chunk.set([13, 10], head.length + 1024 * 1024);
    let pushed = 0;
    const deadline = Date.now() + 4000;
    // Four clients at once, each reconnecting when the VMM cuts it off.
    await Promise.all(Array.from({ length: 4 }, async () => {
      while (Date.now() < deadline) {
        const c = await Deno.connect({ transport: "unix", path: sock });
        try {
          await c.write(new TextEncoder().encode(
            "PATCH /vm HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
          ));
          for (let i = 0; i < 64 && Date.now() < deadline; i++) {
            let off = 0;
            while (off < chunk.length) {
              const n = await c.write(chunk.subarray(off));
              off += n;
              pushed += n;
            }
          }
        } catch (err) {
          if (
            !(err instanceof Deno.errors.BrokenPipe || err instanceof Deno.errors.ConnectionReset)
          ) {
            throw err;
          }
        } finally {
          c.close();
        }
      }
    }));
    const after = await rssBytes(child.child.pid);
    const grew = after - before;
    console.log(
      `pushed ${(pushed / 1048576).toFixed(0)} MiB; VMM RSS ${(before / 1048576).toFixed(0)} -> ${
        (after / 1048576).toFixed(0)
      } MiB`,
    );
    assert.ok(pushed > 8 * 1024 * 1024, `the flood pushed only ${pushed} bytes`);
    assert.ok(
      grew < 64 * 1024 * 1024,
      `VMM resident memory grew by ${(grew / 1048576).toFixed(0)} MiB under ${
        (pushed / 1048576).toFixed(0)
      } MiB of chunked bodies`,
    );
    // The API still answers, and the VM still runs.
    const vm = await curl(sock, "GET", "/vm");
    assert.equal(JSON.parse(vm.body).state, "Running");
    assert.equal((await curl(sock, "PUT", "/actions", { action_type: "Shutdown" })).status, 204);
    assert.equal((await child.exit()).code, 0);
  } finally {
    await child[Symbol.asyncDispose]();
    await Deno.remove(dir, { recursive: true });
  }
});
