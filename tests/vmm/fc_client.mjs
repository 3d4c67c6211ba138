// A Firecracker API client written from Firecracker's own documents only
// (firecracker.yaml, docs/getting-started.md, docs/snapshotting/snapshot-support.md),
// in plain Node with no vmkit code: the request bodies are the documented ones,
// and every reply must carry the status the swagger gives for it (204 for each
// PUT/PATCH below, 200 for GET /). It is how an outsider's tooling drives a VMM.
//
//   node fc_client.mjs boot SOCK KERNEL BOOT_ARGS DISK
//   node fc_client.mjs snapshot SOCK SNAPSHOT MEM
//   node fc_client.mjs load SOCK SNAPSHOT MEM
//   node fc_client.mjs ctrl-alt-del SOCK
//
// Exits 0 when every reply was the documented one, else prints the first
// mismatch and exits 1.

import http from "node:http";

const [phase, sock, ...args] = process.argv.slice(2);

function call(method, path, body) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = http.request(
      {
        socketPath: sock,
        method,
        path,
        headers: {
          "Accept": "application/json",
          ...(data === undefined
            ? {}
            : { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) }),
        },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (c) => (text += c));
        res.on("end", () => resolve({ status: res.statusCode, body: text }));
      },
    );
    req.on("error", reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

async function expect(status, method, path, body) {
  const r = await call(method, path, body);
  if (r.status !== status) {
    console.error(`${method} ${path}: expected ${status}, got ${r.status} ${r.body}`);
    process.exit(1);
  }
  if (status === 204 && r.body !== "") {
    console.error(`${method} ${path}: 204 with a body: ${r.body}`);
    process.exit(1);
  }
  return r.body;
}

switch (phase) {
  case "boot": {
    const [kernel, bootArgs, disk] = args;
    const info = JSON.parse(await expect(200, "GET", "/"));
    if (info.state !== "Not started") throw new Error(`state ${info.state}`);
    await expect(204, "PUT", "/boot-source", { kernel_image_path: kernel, boot_args: bootArgs });
    await expect(204, "PUT", "/drives/rootfs", {
      drive_id: "rootfs",
      path_on_host: disk,
      is_root_device: true,
      is_read_only: false,
    });
    await expect(204, "PUT", "/machine-config", {
      vcpu_count: 1,
      mem_size_mib: 64,
      smt: false,
      track_dirty_pages: true,
    });
    await expect(204, "PUT", "/actions", { action_type: "InstanceStart" });
    break;
  }
  case "snapshot": {
    // snapshot-support.md: pause, create, and the files are ready when create returns.
    const [snapshot, mem] = args;
    await expect(204, "PATCH", "/vm", { state: "Paused" });
    await expect(204, "PUT", "/snapshot/create", {
      snapshot_type: "Full",
      snapshot_path: snapshot,
      mem_file_path: mem,
    });
    break;
  }
  case "load": {
    const [snapshot, mem] = args;
    await expect(204, "PUT", "/snapshot/load", {
      snapshot_path: snapshot,
      mem_backend: { backend_path: mem, backend_type: "File" },
      enable_diff_snapshots: true,
      resume_vm: true,
    });
    const info = JSON.parse(await expect(200, "GET", "/"));
    if (info.state !== "Running") throw new Error(`state after load ${info.state}`);
    break;
  }
  case "ctrl-alt-del":
    await expect(204, "PUT", "/actions", { action_type: "SendCtrlAltDel" });
    break;
  default:
    console.error(`unknown phase ${phase}`);
    process.exit(64);
}
