/**
 * The fleet SUI registry: etcd v3 (through its HTTP/JSON gateway), shared by
 * many hosts. Every allocation is one transaction that creates both the VM's
 * key and the SUI's key only if neither exists, so two hosts can never hand
 * out the same SUI, and a VM racing with itself gets one SUI back.
 *
 * Keys (under a prefix, default `/vmkit/sui`):
 * - `<prefix>/vm/<type>/<vmId>` → `{"sui", "wwnn"?, "at"}`
 * - `<prefix>/id/<sui>` → `{"vm", "type", "releasedAt"?}` (kept while in quarantine)
 *
 * @module
 */

import { SuiRegistryError } from "./errors.ts";
import {
  DEFAULT_QUARANTINE_MS,
  MAX_CANDIDATES,
  type RegistryOptions,
  type SuiRegistry,
} from "./registry.ts";
import {
  randomSuiGenerator,
  type SuiGenerator,
  type SuiRecord,
  type SuiType,
  validateVmId,
} from "./sui.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function b64(s: string): string {
  let bin = "";
  for (const b of encoder.encode(s)) bin += String.fromCharCode(b);
  return btoa(bin);
}

function unb64(s: string): string {
  return decoder.decode(Uint8Array.from(atob(s), (c) => c.charCodeAt(0)));
}

/** The key after every key with `prefix` (etcd range_end for a prefix scan). */
function prefixEnd(prefix: string): string {
  const bytes = encoder.encode(prefix);
  const last = bytes.length - 1;
  bytes[last] = (bytes[last] ?? 0) + 1;
  return decoder.decode(bytes);
}

interface EtcdKv {
  key: string;
  value?: string;
  create_revision?: string;
  mod_revision?: string;
}

interface EtcdRangeResponse {
  kvs?: EtcdKv[];
}

interface EtcdTxnResponse {
  succeeded?: boolean;
  responses?: Array<{ response_range?: EtcdRangeResponse }>;
}

/** Options for {@link EtcdSuiRegistry}. */
export interface EtcdRegistryOptions extends RegistryOptions {
  /** Key prefix (default `/vmkit/sui`). */
  readonly prefix?: string;
  /** Parallel allocations in {@link EtcdSuiRegistry.allocMany} (default 16). */
  readonly concurrency?: number;
}

/** Parses `etcd://HOST:PORT[/prefix]` into an HTTP endpoint and key prefix. */
export function parseEtcdUrl(url: string): { endpoint: string; prefix: string | undefined } {
  const m = /^etcd:\/\/(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})(\/.*)?$/.exec(url.trim());
  if (m === null) {
    throw new SuiRegistryError(`'${url}' is not an etcd URL; expected etcd://HOST:PORT[/prefix]`);
  }
  const prefix = m[3] === undefined || m[3] === "/" ? undefined : m[3].replace(/\/+$/, "");
  return { endpoint: `http://${m[1]}:${m[2]}`, prefix };
}

/**
 * A registry in etcd.
 *
 * @example
 * ```ts ignore
 * // ignore: needs an etcd server on 127.0.0.1:2379.
 * const reg = new EtcdSuiRegistry("http://127.0.0.1:2379");
 * const rec = await reg.alloc("vm-1", "wwpn");
 * console.log(rec.sui, rec.wwnn);
 * await reg.close();
 * ```
 */
export class EtcdSuiRegistry implements SuiRegistry {
  /** The etcd client URL (http://host:port). */
  readonly endpoint: string;
  /** Key prefix. */
  readonly prefix: string;
  readonly #generate: SuiGenerator;
  readonly #quarantineMs: number;
  readonly #now: () => number;
  readonly #concurrency: number;
  readonly #readOnly: boolean;
  #closed = false;

  /** Creates a registry client for the etcd at `endpoint`. */
  constructor(endpoint: string, options: EtcdRegistryOptions = {}) {
    this.endpoint = endpoint.replace(/\/+$/, "");
    this.prefix = options.prefix ?? "/vmkit/sui";
    this.#generate = options.generate ?? randomSuiGenerator(options);
    this.#quarantineMs = options.quarantineMs ?? DEFAULT_QUARANTINE_MS;
    this.#now = options.now ?? Date.now;
    this.#concurrency = options.concurrency ?? 16;
    this.#readOnly = options.readOnly ?? false;
  }

  #checkWritable(): void {
    if (this.#readOnly) throw new SuiRegistryError(`etcd registry ${this.endpoint} is read-only`);
  }

  async #call<T>(path: string, body: unknown): Promise<T> {
    if (this.#closed) throw new SuiRegistryError("etcd registry is closed");
    let res: Response;
    try {
      res = await fetch(`${this.endpoint}${path}`, {
        method: "POST",
        body: JSON.stringify(body),
        headers: { "content-type": "application/json" },
      });
    } catch (err) {
      throw new SuiRegistryError(
        `cannot reach etcd at ${this.endpoint}: ${(err as Error).message}; is etcd running?`,
        { cause: err },
      );
    }
    const text = await res.text();
    if (!res.ok) {
      throw new SuiRegistryError(
        `etcd ${path} failed with HTTP ${res.status}: ${text.slice(0, 200)}`,
      );
    }
    return JSON.parse(text) as T;
  }

  #vmKey(vmId: string, type: SuiType): string {
    return `${this.prefix}/vm/${type}/${vmId}`;
  }

  #idKey(sui: string): string {
    return `${this.prefix}/id/${sui}`;
  }

  #record(vmId: string, type: SuiType, kv: EtcdKv): SuiRecord {
    const v = JSON.parse(unb64(kv.value ?? "")) as { sui?: unknown; wwnn?: unknown; at?: unknown };
    if (typeof v.sui !== "string" || typeof v.at !== "number") {
      throw new SuiRegistryError(`malformed registry value at ${unb64(kv.key)}`);
    }
    return typeof v.wwnn === "string"
      ? { vmId, type, sui: v.sui, wwnn: v.wwnn, allocatedAt: v.at }
      : { vmId, type, sui: v.sui, allocatedAt: v.at };
  }

  /** The VM's SUI of `type`, if it holds one. */
  async get(vmId: string, type: SuiType = "iqn"): Promise<SuiRecord | undefined> {
    validateVmId(vmId);
    const r = await this.#call<EtcdRangeResponse>("/v3/kv/range", {
      key: b64(this.#vmKey(vmId, type)),
    });
    const kv = r.kvs?.[0];
    return kv === undefined ? undefined : this.#record(vmId, type, kv);
  }

  /** Returns the VM's SUI of `type`, allocating a unique one if needed; durable once resolved. */
  async alloc(vmId: string, type: SuiType = "iqn"): Promise<SuiRecord> {
    this.#checkWritable();
    validateVmId(vmId);
    const vmKey = b64(this.#vmKey(vmId, type));
    for (let i = 0; i < MAX_CANDIDATES; i++) {
      const c = this.#generate(type);
      const now = this.#now();
      const idKey = b64(this.#idKey(c.sui));
      const attempt = async (idCompare: Record<string, string>): Promise<EtcdTxnResponse> =>
        await this.#call<EtcdTxnResponse>("/v3/kv/txn", {
          compare: [
            { key: vmKey, target: "CREATE", result: "EQUAL", create_revision: "0" },
            { key: idKey, ...idCompare },
          ],
          success: [
            {
              request_put: {
                key: vmKey,
                value: b64(JSON.stringify({ sui: c.sui, wwnn: c.wwnn, at: now })),
              },
            },
            { request_put: { key: idKey, value: b64(JSON.stringify({ vm: vmId, type })) } },
          ],
          failure: [{ request_range: { key: vmKey } }, { request_range: { key: idKey } }],
        });
      let r = await attempt({ target: "CREATE", result: "EQUAL", create_revision: "0" });
      if (!r.succeeded) {
        const mine = r.responses?.[0]?.response_range?.kvs?.[0];
        if (mine !== undefined) return this.#record(vmId, type, mine);
        const held = r.responses?.[1]?.response_range?.kvs?.[0];
        if (held === undefined) continue;
        const h = JSON.parse(unb64(held.value ?? "")) as { releasedAt?: unknown };
        const expired = typeof h.releasedAt === "number" &&
          now - h.releasedAt >= this.#quarantineMs;
        if (!expired) continue;
        r = await attempt({
          target: "MOD",
          result: "EQUAL",
          mod_revision: held.mod_revision ?? "0",
        });
        if (!r.succeeded) {
          const again = r.responses?.[0]?.response_range?.kvs?.[0];
          if (again !== undefined) return this.#record(vmId, type, again);
          continue;
        }
      }
      return c.wwnn === undefined
        ? { vmId, type, sui: c.sui, allocatedAt: now }
        : { vmId, type, sui: c.sui, wwnn: c.wwnn, allocatedAt: now };
    }
    throw new SuiRegistryError(
      `no free ${type} SUI after ${MAX_CANDIDATES} candidates in etcd ${this.endpoint}: the ` +
        `identity space is exhausted or in quarantine`,
    );
  }

  /** Allocates (or returns) SUIs for many VMs in one durable step. */
  async allocMany(vmIds: readonly string[], type: SuiType = "iqn"): Promise<SuiRecord[]> {
    for (const id of vmIds) validateVmId(id);
    const out: SuiRecord[] = new Array(vmIds.length);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < vmIds.length) {
        const i = next++;
        out[i] = await this.alloc(vmIds[i] ?? "", type);
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.#concurrency, vmIds.length) }, worker));
    return out;
  }

  /** Every live allocation, sorted by VM id then type. */
  async list(): Promise<SuiRecord[]> {
    const start = `${this.prefix}/vm/`;
    const r = await this.#call<EtcdRangeResponse>("/v3/kv/range", {
      key: b64(start),
      range_end: b64(prefixEnd(start)),
    });
    const out: SuiRecord[] = [];
    for (const kv of r.kvs ?? []) {
      const rest = unb64(kv.key).slice(start.length);
      const slash = rest.indexOf("/");
      const type = rest.slice(0, slash);
      if (type !== "iqn" && type !== "wwpn" && type !== "nqn") continue;
      out.push(this.#record(rest.slice(slash + 1), type, kv));
    }
    return out.sort((a, b) =>
      a.vmId < b.vmId ? -1 : a.vmId > b.vmId ? 1 : a.type < b.type ? -1 : a.type > b.type ? 1 : 0
    );
  }

  /** Releases the VM's SUI of `type` (all types if omitted) into quarantine; returns what was released. */
  async release(vmId: string, type?: SuiType): Promise<SuiRecord[]> {
    this.#checkWritable();
    validateVmId(vmId);
    const out: SuiRecord[] = [];
    for (const t of type === undefined ? (["iqn", "wwpn", "nqn"] as const) : [type]) {
      for (let attempt = 0; attempt < 16; attempt++) {
        const vmKey = b64(this.#vmKey(vmId, t));
        const r0 = await this.#call<EtcdRangeResponse>("/v3/kv/range", { key: vmKey });
        const kv = r0.kvs?.[0];
        if (kv === undefined) break;
        const rec = this.#record(vmId, t, kv);
        const r = await this.#call<EtcdTxnResponse>("/v3/kv/txn", {
          compare: [{ key: vmKey, target: "MOD", result: "EQUAL", mod_revision: kv.mod_revision }],
          success: [
            { request_delete_range: { key: vmKey } },
            {
              request_put: {
                key: b64(this.#idKey(rec.sui)),
                value: b64(JSON.stringify({ vm: vmId, type: t, releasedAt: this.#now() })),
              },
            },
          ],
          failure: [],
        });
        if (r.succeeded) {
          out.push(rec);
          break;
        }
      }
    }
    return out;
  }

  /** Marks the client closed; later calls fail. */
  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }
}
