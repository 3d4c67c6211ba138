/**
 * Issue 11.8: the control API bounds every client — body bytes while they
 * are read (chunked too), header bytes and time, idle time, concurrent
 * connections, the socket's mode whatever the umask, and what it refuses to
 * replace.
 */

import assert from "node:assert/strict";
import { ApiServerError, startApiServer } from "../../vmm/api/mod.ts";
import { FakeMachine, withServer } from "./api_fake.ts";
import { RawConn, rawRequest } from "./api_raw_client.ts";

const MIB = 1024 * 1024;

Deno.test("api refuses a chunked body past 64 KiB while reading it, with bounded memory", async () => {
  await withServer(async (sock, vm) => {
    const c = await RawConn.open(sock);
    const rss0 = Deno.memoryUsage().rss;
    await c.write(
      "PATCH /vm HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" +
        "Transfer-Encoding: chunked\r\n\r\n",
    );
    const chunk = new Uint8Array(MIB + 12);
    const head = new TextEncoder().encode(`${MIB.toString(16)}\r\n`);
    chunk.set(head);
    chunk.fill(0x20, head.length, head.length + MIB);
    chunk.set([13, 10], head.length + MIB);
    const reply = c.response();
    // Today's attack: 1 MiB chunks for 12 s. Here at most 64 chunks, stopping
    // at the first failed write (the server closed the connection).
    let written = 0;
    const deadline = Date.now() + 12_000;
    for (let i = 0; i < 64 && Date.now() < deadline; i++) {
      try {
        await c.write(chunk);
      } catch (err) {
        assert.ok(
          err instanceof Deno.errors.BrokenPipe || err instanceof Deno.errors.ConnectionReset,
          String(err),
        );
        break;
      }
      written += chunk.length;
    }
    const r = await reply;
    assert.equal(r.status, 400);
    assert.match(JSON.parse(r.body).fault_message, /exceeds 65536 bytes/);
    assert.ok(await c.closedByServer());
    c.close();
    // The server stopped reading after the first chunk: only socket buffers took the rest.
    assert.ok(written < 8 * MIB, `the client pushed ${written} bytes before the server cut it off`);
    const grew = Deno.memoryUsage().rss - rss0;
    assert.ok(grew < 48 * MIB, `resident memory grew by ${(grew / MIB).toFixed(0)} MiB`);
    assert.deepEqual(vm.calls, []);
  });
});

Deno.test("api decodes a chunked body within the limit (extensions and trailers too)", async () => {
  await withServer(async (sock, vm) => {
    const c = await RawConn.open(sock);
    await c.write(
      "PATCH /vm HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n" +
        '5;ext=1\r\n{"sta\r\n' + 'c\r\nte":"Paused"\r\n' + "1\r\n}\r\n" +
        "0\r\nX-Trailer: yes\r\n\r\n",
    );
    const r = await c.response();
    assert.equal(r.status, 204, r.body);
    assert.equal(vm.state, "Paused");
    // Keep-alive: the same connection serves the next request.
    await c.write("GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n");
    const g = await c.response();
    assert.equal(g.status, 200);
    assert.equal(JSON.parse(g.body).state, "Paused");
    c.close();
  });
});

Deno.test("api refuses a declared body past 64 KiB without reading it", async () => {
  await withServer(async (sock) => {
    const c = await RawConn.open(sock);
    await c.write(
      "PUT /actions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1073741824\r\n\r\n",
    );
    const r = await c.response();
    assert.equal(r.status, 400);
    assert.match(JSON.parse(r.body).fault_message, /1073741824 bytes exceeds 65536/);
    assert.equal(r.headers["connection"], "close");
    assert.ok(await c.closedByServer());
    c.close();
  });
});

Deno.test("api answers headers past 16 KiB with 431 and closes the connection", async () => {
  await withServer(async (sock) => {
    const c = await RawConn.open(sock);
    const filler = `X-Filler: ${"a".repeat(1000)}\r\n`;
    // Stop at the first failed write: the server may close before the rest arrives.
    let refused = false;
    await c.write("GET /vm HTTP/1.1\r\nHost: localhost\r\n");
    for (let i = 0; i < 40 && !refused; i++) {
      await c.write(filler).catch(() => refused = true);
    }
    const r = await c.response();
    assert.equal(r.status, 431);
    assert.match(JSON.parse(r.body).fault_message, /headers exceed 16384 bytes/);
    assert.ok(await c.closedByServer());
    c.close();
  });
});

Deno.test("api cuts off a client that trickles its headers at the header deadline", async () => {
  await withServer(async (sock) => {
    const c = await RawConn.open(sock);
    const t0 = Date.now();
    await c.write("GET /vm HTTP/1.1\r\n");
    let stopped = false;
    const trickle = (async () => {
      for (let i = 0; i < 40 && !stopped; i++) {
        await new Promise((r) => setTimeout(r, 100));
        await c.write(`X-${i}: b\r\n`).catch(() => stopped = true);
      }
    })();
    assert.ok(await c.closedByServer());
    const took = Date.now() - t0;
    stopped = true;
    await trickle;
    c.close();
    assert.ok(took >= 400 && took < 3000, `closed after ${took} ms (header limit 500 ms)`);
  }, { headerTimeoutMs: 500 });
});

Deno.test("api closes idle connections: silent from the start and after a keep-alive reply", async () => {
  await withServer(async (sock) => {
    const silent = await RawConn.open(sock);
    const t0 = Date.now();
    assert.ok(await silent.closedByServer());
    const took = Date.now() - t0;
    silent.close();
    assert.ok(took >= 250 && took < 3000, `silent connection closed after ${took} ms`);

    const kept = await RawConn.open(sock);
    await kept.write("GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert.equal((await kept.response()).status, 200);
    const t1 = Date.now();
    assert.ok(await kept.closedByServer());
    const idle = Date.now() - t1;
    kept.close();
    assert.ok(idle >= 250 && idle < 3000, `keep-alive connection closed after ${idle} ms idle`);
  }, { idleTimeoutMs: 300 });
});

Deno.test("api caps concurrent connections and answers one more with 503", async () => {
  await withServer(async (sock) => {
    const held: RawConn[] = [];
    for (let i = 0; i < 4; i++) {
      const c = await RawConn.open(sock);
      // A request each, so every connection is accepted and counted before the next.
      await c.write("GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n");
      assert.equal((await c.response()).status, 200);
      held.push(c);
    }
    const extra = await RawConn.open(sock);
    const r = await extra.response();
    assert.equal(r.status, 503);
    assert.match(JSON.parse(r.body).fault_message, /too many connections \(limit 4\)/);
    assert.ok(await extra.closedByServer());
    extra.close();
    held.pop()?.close();
    // The slot is free again once the server has seen that close.
    let ok = false;
    for (let i = 0; i < 50 && !ok; i++) {
      await new Promise((res) => setTimeout(res, 20));
      ok = (await rawRequest(sock, "GET", "/vm")).status === 200;
    }
    assert.ok(ok, "a new connection was not served after one closed");
    for (const c of held) c.close();
  }, { maxConnections: 4 });
});

Deno.test("api answers Expect: 100-continue and pipelined requests in order", async () => {
  await withServer(async (sock, vm) => {
    const c = await RawConn.open(sock);
    const body = JSON.stringify({ state: "Paused" });
    await c.write(
      `PATCH /vm HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n` +
        `Content-Length: ${body.length}\r\n\r\n`,
    );
    assert.equal((await c.response()).status, 100);
    await c.write(body);
    assert.equal((await c.response()).status, 204);
    await c.write(
      "GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\nGET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n" +
        "GET /vm HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert.equal((await c.response()).status, 200);
    assert.equal((await c.response()).status, 404);
    const last = await c.response();
    assert.equal(last.status, 200);
    assert.equal(last.headers["connection"], "close");
    assert.ok(await c.closedByServer());
    c.close();
    assert.deepEqual(vm.calls, ["pause"]);
  });
});

Deno.test("api rejects malformed framing: TE with CL, unknown codings, bad versions", async () => {
  await withServer(async (sock) => {
    const cases: Array<[string, number, RegExp]> = [
      [
        "PUT /actions HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400,
        /both Transfer-Encoding and Content-Length/,
      ],
      ["PUT /actions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, /not supported/],
      ["GET /vm HTTP/2.0\r\n\r\n", 505, /not supported/],
      ["GET /vm\r\n\r\n", 400, /malformed request line/],
      ["GET /vm HTTP/1.1\r\nbad header\r\n\r\n", 400, /malformed header line/],
      ["PUT /actions HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", 400, /malformed Content-Length/],
      ["PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, /chunk size/],
    ];
    for (const [req, status, re] of cases) {
      const c = await RawConn.open(sock);
      await c.write(req);
      const r = await c.response();
      assert.equal(r.status, status, req);
      assert.match(JSON.parse(r.body).fault_message, re, req);
      c.close();
    }
  });
});

Deno.test("api socket is created 0600 under umask 000 and leaves no private directory", async () => {
  const dir = await Deno.makeTempDir();
  const sock = `${dir}/api.sock`;
  const mod = new URL("./api_fake.ts", import.meta.url).href;
  const api = new URL("../../vmm/api/mod.ts", import.meta.url).href;
  const script = `const { FakeMachine } = await import(${JSON.stringify(mod)});` +
    `const { startApiServer } = await import(${JSON.stringify(api)});` +
    `await startApiServer(${JSON.stringify(sock)}, new FakeMachine());` +
    `console.log("ready");`;
  const child = new Deno.Command("sh", {
    args: ["-c", 'umask 000; exec "$0" eval "$1"', Deno.execPath(), script],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  try {
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    assert.match(new TextDecoder().decode(value), /ready/);
    reader.releaseLock();
    const info = await Deno.lstat(sock);
    assert.equal(info.isSocket, true);
    assert.equal((info.mode ?? 0) & 0o777, 0o600);
    const names = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names, ["api.sock"]);
    assert.equal((await rawRequest(sock, "GET", "/vm")).status, 200);
  } finally {
    child.kill("SIGKILL");
    await child.status;
    await child.stdout.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("api never replaces a regular file, directory, symlink or live socket at its path", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const vm = new FakeMachine();
    const file = `${dir}/file.sock`;
    await Deno.writeTextFile(file, "precious");
    await assert.rejects(startApiServer(file, vm), /exists and is not a socket/);
    assert.equal(await Deno.readTextFile(file), "precious");

    const sub = `${dir}/sub.sock`;
    await Deno.mkdir(sub);
    await assert.rejects(startApiServer(sub, vm), /is a directory/);
    assert.equal((await Deno.lstat(sub)).isDirectory, true);

    const live = `${dir}/live.sock`;
    const first = await startApiServer(live, vm);
    try {
      const link = `${dir}/link.sock`;
      await Deno.symlink(live, link);
      await assert.rejects(startApiServer(link, vm), /is a symlink/);
      await assert.rejects(startApiServer(live, vm), ApiServerError);
      await assert.rejects(startApiServer(live, vm), /another process is serving on it/);
      assert.equal((await rawRequest(live, "GET", "/vm")).status, 200);
    } finally {
      await first.close();
    }
    const names: string[] = [];
    for await (const e of Deno.readDir(dir)) names.push(e.name);
    assert.deepEqual(names.sort(), ["file.sock", "link.sock", "sub.sock"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("api close leaves alone a file that replaced its socket", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const sock = `${dir}/api.sock`;
    const server = await startApiServer(sock, new FakeMachine());
    await Deno.remove(sock);
    await Deno.writeTextFile(sock, "someone else's");
    await server.close();
    assert.equal(await Deno.readTextFile(sock), "someone else's");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
