/**
 * The SUI registry contract shared by the file and etcd backends, and the
 * in-memory state both replay: which VM holds which SUI, and which released
 * SUIs are still in quarantine.
 *
 * @module
 */

import { SuiRegistryError } from "./errors.ts";
import {
  type Sui,
  type SuiGenerator,
  type SuiGeneratorOptions,
  type SuiRecord,
  type SuiType,
  validateVmId,
} from "./sui.ts";

/** Default quarantine of a released SUI before it may be handed out again: 24 hours. */
export const DEFAULT_QUARANTINE_MS: number = 24 * 60 * 60 * 1000;
/** How many candidates an allocation tries before reporting the space as exhausted. */
export const MAX_CANDIDATES = 64;

/** A store of SUI allocations. */
export interface SuiRegistry {
  /**
   * Returns the VM's SUI of `type`, allocating a new unique one if it has none.
   * Idempotent: the same VM always gets the same SUI back until released.
   * Once this resolves the allocation is durable.
   */
  alloc(vmId: string, type?: SuiType): Promise<SuiRecord>;
  /** Allocates for many VMs in one durable step (one fsync or few transactions). */
  allocMany(vmIds: readonly string[], type?: SuiType): Promise<SuiRecord[]>;
  /** The VM's SUI of `type`, if it holds one. */
  get(vmId: string, type?: SuiType): Promise<SuiRecord | undefined>;
  /** Every allocation, sorted by VM id then type. */
  list(): Promise<SuiRecord[]>;
  /**
   * Releases the VM's SUI of `type` (all its SUIs if `type` is omitted); the SUIs
   * stay in quarantine for the registry's quarantine period. Returns what was released.
   */
  release(vmId: string, type?: SuiType): Promise<SuiRecord[]>;
  /** Releases resources (files, locks); the registry is unusable afterwards. */
  close(): Promise<void>;
}

/** Options common to every registry backend. */
export interface RegistryOptions extends SuiGeneratorOptions {
  /** How long a released SUI is withheld before reuse (default 24 h). */
  readonly quarantineMs?: number;
  /** Candidate generator (default: {@link randomSuiGenerator} with the options above). */
  readonly generate?: SuiGenerator;
  /** Clock, milliseconds since the epoch (default `Date.now`). */
  readonly now?: () => number;
  /**
   * Open for reading only: `alloc` and `release` fail, and nothing is written
   * (no lock file, journal or directory is created, nothing is truncated).
   */
  readonly readOnly?: boolean;
}

/** A journal entry: an allocation or a release. */
export type RegistryEntry =
  | {
    readonly op: "alloc";
    readonly vm: string;
    readonly type: SuiType;
    readonly sui: string;
    readonly wwnn?: string;
    readonly at: number;
  }
  | {
    readonly op: "release";
    readonly vm: string;
    readonly type: SuiType;
    readonly sui: string;
    readonly at: number;
  };

/** Who holds a SUI value, or since when it is quarantined. */
export interface SuiHolder {
  /** The VM holding (or that last held) the SUI. */
  readonly vmId: string;
  /** The SUI type. */
  readonly type: SuiType;
  /** Set while in quarantine: release time. */
  readonly releasedAt?: number;
}

/** Key of a (VM, type) pair in maps. */
export function vmKey(vmId: string, type: SuiType): string {
  return `${type}/${vmId}`;
}

/** Validates one parsed journal line; throws on anything unexpected. */
export function parseEntry(value: unknown): RegistryEntry {
  if (typeof value !== "object" || value === null) {
    throw new SuiRegistryError(`journal entry is not an object: ${JSON.stringify(value)}`);
  }
  const v = value as Record<string, unknown>;
  const ok = (v.op === "alloc" || v.op === "release") && typeof v.vm === "string" &&
    (v.type === "iqn" || v.type === "wwpn" || v.type === "nqn") && typeof v.sui === "string" &&
    typeof v.at === "number" && (v.wwnn === undefined || typeof v.wwnn === "string");
  if (!ok) throw new SuiRegistryError(`malformed journal entry: ${JSON.stringify(value)}`);
  return v as RegistryEntry;
}

/** The replayed registry: allocations by VM and holders by SUI value. */
export class RegistryState {
  /** Live allocations keyed by {@link vmKey}. */
  readonly byVm: Map<string, SuiRecord> = new Map();
  /** Every SUI value in use or in quarantine. */
  readonly bySui: Map<string, SuiHolder> = new Map();

  /** Applies one journal entry. */
  apply(e: RegistryEntry): void {
    if (e.op === "alloc") {
      const rec: SuiRecord = e.wwnn === undefined
        ? { vmId: e.vm, type: e.type, sui: e.sui, allocatedAt: e.at }
        : { vmId: e.vm, type: e.type, sui: e.sui, wwnn: e.wwnn, allocatedAt: e.at };
      this.byVm.set(vmKey(e.vm, e.type), rec);
      this.bySui.set(e.sui, { vmId: e.vm, type: e.type });
    } else {
      this.byVm.delete(vmKey(e.vm, e.type));
      this.bySui.set(e.sui, { vmId: e.vm, type: e.type, releasedAt: e.at });
    }
  }

  /** Empties the state (before a full replay). */
  clear(): void {
    this.byVm.clear();
    this.bySui.clear();
  }

  /** Whether `sui` may be handed out now. */
  isFree(sui: string, now: number, quarantineMs: number): boolean {
    const h = this.bySui.get(sui);
    if (h === undefined) return true;
    return h.releasedAt !== undefined && now - h.releasedAt >= quarantineMs;
  }

  /**
   * Plans an allocation: the existing record, or a new entry with a candidate
   * that is neither held nor quarantined. The caller applies and persists it.
   */
  planAlloc(
    vmId: string,
    type: SuiType,
    generate: SuiGenerator,
    now: number,
    quarantineMs: number,
  ): SuiRecord | RegistryEntry {
    validateVmId(vmId);
    const existing = this.byVm.get(vmKey(vmId, type));
    if (existing !== undefined) return existing;
    for (let i = 0; i < MAX_CANDIDATES; i++) {
      const c: Sui = generate(type);
      if (c.type !== type) {
        throw new SuiRegistryError(`SUI generator returned type ${c.type} when asked for ${type}`);
      }
      if (!this.isFree(c.sui, now, quarantineMs)) continue;
      if (c.wwnn !== undefined && this.bySui.has(c.wwnn)) continue;
      return c.wwnn === undefined
        ? { op: "alloc", vm: vmId, type, sui: c.sui, at: now }
        : { op: "alloc", vm: vmId, type, sui: c.sui, wwnn: c.wwnn, at: now };
    }
    throw new SuiRegistryError(
      `no free ${type} SUI after ${MAX_CANDIDATES} candidates: the identity space is exhausted ` +
        `or mostly in quarantine; release VMs, shorten the quarantine or widen the generator`,
    );
  }

  /** Sorted list of live allocations. */
  list(): SuiRecord[] {
    return [...this.byVm.values()].sort((a, b) =>
      a.vmId < b.vmId ? -1 : a.vmId > b.vmId ? 1 : a.type < b.type ? -1 : a.type > b.type ? 1 : 0
    );
  }

  /** Entries that recreate this state (live allocations and unexpired quarantine). */
  snapshot(now: number, quarantineMs: number): RegistryEntry[] {
    const out: RegistryEntry[] = [];
    for (const [sui, h] of this.bySui) {
      if (h.releasedAt !== undefined && now - h.releasedAt < quarantineMs) {
        out.push({ op: "release", vm: h.vmId, type: h.type, sui, at: h.releasedAt });
      }
    }
    for (const r of this.byVm.values()) {
      out.push(
        r.wwnn === undefined
          ? { op: "alloc", vm: r.vmId, type: r.type, sui: r.sui, at: r.allocatedAt }
          : { op: "alloc", vm: r.vmId, type: r.type, sui: r.sui, wwnn: r.wwnn, at: r.allocatedAt },
      );
    }
    return out;
  }
}
