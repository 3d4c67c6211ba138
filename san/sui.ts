/**
 * Substantially unique identifiers (SUIs): the per-VM storage-network identity
 * a host uses when it logs into a SAN and does I/O on a VM's behalf. One VM may
 * hold one SUI of each type: an iSCSI initiator name, an FC WWPN (with its
 * WWNN) for NPIV, and an NVMe host NQN.
 *
 * @module
 */

import { SuiFormatError } from "./errors.ts";
import { makeIqn, parseIscsiName } from "./iscsi_name.ts";
import { makeHostNqn, parseNqn } from "./nqn.ts";
import { makeWwnPair, parseWwn, wwnnForWwpn } from "./wwn.ts";

/** The kinds of SUI: iSCSI initiator name, FC port name (NPIV), NVMe host NQN. */
export type SuiType = "iqn" | "wwpn" | "nqn";

/** Every SUI type, for validation of user input. */
export const SUI_TYPES: readonly SuiType[] = ["iqn", "wwpn", "nqn"];

/** Default naming authority for generated iSCSI initiator names. */
export const DEFAULT_IQN_PREFIX = "iqn.2024-01.dev.vmkit";
/**
 * Default IEEE OUI for generated WWNs. 0x5254 00 is the locally administered
 * prefix QEMU uses for MACs; set your own company's OUI in production.
 */
export const DEFAULT_OUI = 0x525400;

/** One VM's identity of one type, as stored in its configuration. */
export interface Sui {
  /** Which kind of identity. */
  readonly type: SuiType;
  /** The identity itself: an iSCSI name, a colon-hex WWPN or an NQN. */
  readonly sui: string;
  /** For `wwpn`, the paired World Wide Node Name. */
  readonly wwnn?: string;
}

/** A SUI held by a VM in a registry. */
export interface SuiRecord extends Sui {
  /** The VM the SUI belongs to. */
  readonly vmId: string;
  /** Allocation time, milliseconds since the epoch. */
  readonly allocatedAt: number;
}

/** Options for generating SUIs. */
export interface SuiGeneratorOptions {
  /** `iqn.YYYY-MM.domain` naming authority for iSCSI names. */
  readonly iqnPrefix?: string;
  /** 24-bit IEEE OUI for NAA 5 WWNs. */
  readonly oui?: number;
}

/** Generates a candidate SUI of a type; the registry rejects candidates already in use. */
export type SuiGenerator = (type: SuiType) => Sui;

const VM_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$/;

/** Checks a VM id: 1..128 characters of letters, digits and `._:@-`. */
export function validateVmId(vmId: string): string {
  if (typeof vmId !== "string" || !VM_ID_RE.test(vmId)) {
    throw new SuiFormatError(
      String(vmId),
      `VM id '${vmId}' is invalid: use 1..128 letters, digits or . _ : @ - ` +
        `(starting with a letter or digit)`,
    );
  }
  return vmId;
}

/** Checks a SUI type name from user input. */
export function parseSuiType(text: string): SuiType {
  const t = text.trim().toLowerCase();
  if (t === "iqn" || t === "wwpn" || t === "nqn") return t;
  throw new SuiFormatError(text, `unknown SUI type '${text}'; use one of ${SUI_TYPES.join(", ")}`);
}

function randomBits(bits: number): bigint {
  const bytes = crypto.getRandomValues(new Uint8Array(Math.ceil(bits / 8)));
  let v = 0n;
  for (const b of bytes) v = (v << 8n) | BigInt(b);
  return v & ((1n << BigInt(bits)) - 1n);
}

/**
 * The default generator: random candidates from large spaces (64 bits for
 * iqn, 35 bits for WWPN/WWNN pairs, 122 bits for NQN). Randomness alone does
 * not prevent collisions at fleet scale; registries check every candidate.
 *
 * @example
 * ```ts
 * const gen = randomSuiGenerator({ oui: 0x001b21 });
 * console.log(gen("wwpn").sui); // e.g. 50:01:b2:1x:xx:xx:xx:xx
 * ```
 */
export function randomSuiGenerator(options: SuiGeneratorOptions = {}): SuiGenerator {
  const prefix = options.iqnPrefix ?? DEFAULT_IQN_PREFIX;
  const oui = options.oui ?? DEFAULT_OUI;
  makeIqn(prefix, "probe");
  return (type: SuiType): Sui => {
    switch (type) {
      case "iqn":
        return {
          type,
          sui: makeIqn(prefix, "vm-" + randomBits(64).toString(16).padStart(16, "0")),
        };
      case "wwpn": {
        const pair = makeWwnPair(oui, randomBits(35));
        return { type, sui: pair.wwpn, wwnn: pair.wwnn };
      }
      case "nqn":
        return { type, sui: makeHostNqn() };
    }
  };
}

/**
 * Validates a SUI (for example one read back from a VM's saved configuration)
 * and returns it in canonical form.
 */
export function parseSui(value: unknown): Sui {
  if (typeof value !== "object" || value === null) {
    throw new SuiFormatError(String(value), "a SUI must be an object {type, sui[, wwnn]}");
  }
  const v = value as Record<string, unknown>;
  if (typeof v.type !== "string" || typeof v.sui !== "string") {
    throw new SuiFormatError(JSON.stringify(value), "a SUI needs string fields 'type' and 'sui'");
  }
  const type = parseSuiType(v.type);
  switch (type) {
    case "iqn":
      return { type, sui: parseIscsiName(v.sui).name };
    case "nqn":
      return { type, sui: parseNqn(v.sui).name };
    case "wwpn": {
      const wwpn = parseWwn(v.sui).text;
      const wwnn = typeof v.wwnn === "string" ? parseWwn(v.wwnn).text : wwnnForWwpn(wwpn);
      return { type, sui: wwpn, wwnn };
    }
  }
}
