/**
 * An AML (ACPI Machine Language) encoder: the few constructs vmkit's DSDT
 * needs, each encoded in one place, following ACPI 6.5 §20.2 ("AML
 * Grammar Definition"). A term is its encoded bytes; constructs that hold
 * other terms ({@link scope}, {@link device}, {@link method}, ...) take them
 * as arguments and prefix the PkgLength the grammar requires.
 *
 * @example
 * ```ts
 * import { device, eisaId, name, scope } from "./aml.ts";
 * const body = scope("\\_SB_", device("COM1", name("_HID", eisaId("PNP0501"))));
 * console.log(body.length);
 * ```
 *
 * @module
 */

import { AcpiError } from "./errors.ts";

/** One encoded AML term (or data object). */
export type Aml = Uint8Array;

// Opcodes (ACPI 6.5 §20.2.5, §20.2.3).
const ZERO_OP = 0x00;
const ONE_OP = 0x01;
const NAME_OP = 0x08;
const BYTE_PREFIX = 0x0a;
const WORD_PREFIX = 0x0b;
const DWORD_PREFIX = 0x0c;
const STRING_PREFIX = 0x0d;
const QWORD_PREFIX = 0x0e;
const SCOPE_OP = 0x10;
const BUFFER_OP = 0x11;
const PACKAGE_OP = 0x12;
const METHOD_OP = 0x14;
const DUAL_NAME_PREFIX = 0x2e;
const MULTI_NAME_PREFIX = 0x2f;
const EXT_OP_PREFIX = 0x5b;
const DEVICE_OP = 0x82; // after EXT_OP_PREFIX
const ROOT_CHAR = 0x5c; // '\'
const PARENT_PREFIX_CHAR = 0x5e; // '^'
const ARG0_OP = 0x68;
const NOTIFY_OP = 0x86;
const LEQUAL_OP = 0x93;
const IF_OP = 0xa0;
const RETURN_OP = 0xa4;
const ONES_OP = 0xff;

/** Largest PkgLength the encoding can express (28 bits). */
export const PKG_LENGTH_MAX = 0x0fff_ffff;

/** Concatenates encoded terms. */
export function concat(...parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * PkgLength (§20.2.4) for a package whose contents after the PkgLength are
 * `bodyLength` bytes; the encoded value counts the PkgLength bytes too. One
 * byte holds up to 63; otherwise bits 7-6 of the lead byte give the count of
 * following bytes, its bits 3-0 the low nibble, and each following byte 8
 * more bits.
 */
export function pkgLength(bodyLength: number): Uint8Array {
  if (!Number.isSafeInteger(bodyLength) || bodyLength < 0) {
    throw new AcpiError(`AML package length ${bodyLength} is not a byte count`);
  }
  if (bodyLength + 1 <= 0x3f) return Uint8Array.of(bodyLength + 1);
  for (let extra = 1; extra <= 3; extra++) {
    const total = bodyLength + 1 + extra;
    if (total < 2 ** (4 + 8 * extra)) {
      const out = new Uint8Array(1 + extra);
      out[0] = (extra << 6) | (total & 0x0f);
      for (let i = 1; i <= extra; i++) out[i] = Math.floor(total / 2 ** (4 + 8 * (i - 1))) & 0xff;
      return out;
    }
  }
  throw new AcpiError(
    `AML package of ${bodyLength} bytes exceeds the PkgLength limit of ${PKG_LENGTH_MAX}`,
  );
}

/** `op PkgLength body`: the shape of every package-style construct. */
function packaged(op: readonly number[], ...body: readonly Uint8Array[]): Uint8Array {
  const inner = concat(...body);
  return concat(Uint8Array.from(op), pkgLength(inner.length), inner);
}

/**
 * A NameSeg (§20.2.2): one to four characters from `A-Z`, `0-9` and `_`
 * (not starting with a digit), padded with `_` to four.
 */
export function nameSeg(seg: string): Uint8Array {
  if (!/^[A-Z_][A-Z0-9_]{0,3}$/.test(seg)) {
    throw new AcpiError(
      `AML name segment '${seg}' is invalid: use 1-4 of A-Z, 0-9, _ (not starting with a digit)`,
    );
  }
  return new TextEncoder().encode(seg.padEnd(4, "_"));
}

/**
 * A NameString (§20.2.2): an optional root `\` or parent `^` prefixes, then
 * dot-separated NameSegs (`"\\_SB_.COM1"`, `"_HID"`, `"^^FOO"`), with the
 * dual or multi name prefix as the segment count requires.
 */
export function nameString(path: string): Uint8Array {
  let i = 0;
  const prefix: number[] = [];
  if (path[0] === "\\") {
    prefix.push(ROOT_CHAR);
    i = 1;
  } else {
    while (path[i] === "^") {
      prefix.push(PARENT_PREFIX_CHAR);
      i++;
    }
  }
  const rest = path.slice(i);
  const segs = rest === "" ? [] : rest.split(".").map(nameSeg);
  if (segs.length > 255) throw new AcpiError(`AML name '${path}' has more than 255 segments`);
  const head = Uint8Array.from(prefix);
  if (segs.length === 0) return concat(head, Uint8Array.of(ZERO_OP)); // NullName
  if (segs.length === 1) return concat(head, ...segs);
  if (segs.length === 2) return concat(head, Uint8Array.of(DUAL_NAME_PREFIX), ...segs);
  return concat(head, Uint8Array.of(MULTI_NAME_PREFIX, segs.length), ...segs);
}

/**
 * An integer data object (§20.2.3) in the shortest encoding: `Zero`, `One`,
 * `Ones` (all 64 bits set), or a Byte/Word/DWord/QWord constant.
 */
export function integer(value: number | bigint): Uint8Array {
  const v = BigInt(value);
  if (v < 0n || v > 0xffff_ffff_ffff_ffffn) {
    throw new AcpiError(`AML integer ${value} is outside 0..2^64-1`);
  }
  if (v === 0n) return Uint8Array.of(ZERO_OP);
  if (v === 1n) return Uint8Array.of(ONE_OP);
  if (v === 0xffff_ffff_ffff_ffffn) return Uint8Array.of(ONES_OP);
  const sizes: ReadonlyArray<[number, number]> = [
    [BYTE_PREFIX, 1],
    [WORD_PREFIX, 2],
    [DWORD_PREFIX, 4],
    [QWORD_PREFIX, 8],
  ];
  for (const [prefix, bytes] of sizes) {
    if (v < 1n << BigInt(8 * bytes)) {
      const out = new Uint8Array(1 + bytes);
      out[0] = prefix;
      for (let b = 0; b < bytes; b++) out[1 + b] = Number((v >> BigInt(8 * b)) & 0xffn);
      return out;
    }
  }
  throw new AcpiError(`AML integer ${value} does not fit a QWord`); // unreachable: range checked
}

/** A String data object (§20.2.3): ASCII characters 0x01-0x7F, NUL-terminated. */
export function string(s: string): Uint8Array {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x01 || c > 0x7f) {
      throw new AcpiError(`AML string ${JSON.stringify(s)} has a character outside 0x01-0x7F`);
    }
  }
  return concat(Uint8Array.of(STRING_PREFIX), new TextEncoder().encode(s), Uint8Array.of(0));
}

/**
 * The 32-bit compressed EISA id of `id` (`"PNP0501"`: three letters A-Z and
 * four hex digits), as ASL's `EisaId()` makes it: 5 bits per letter
 * (`letter - 0x40`) in the first two bytes, the hex digits in the last two.
 */
export function eisaIdValue(id: string): number {
  if (!/^[A-Z]{3}[0-9A-F]{4}$/.test(id)) {
    throw new AcpiError(`EISA id '${id}' must be three letters A-Z and four hex digits`);
  }
  const c = (i: number): number => id.charCodeAt(i) - 0x40;
  const vendor = (c(0) << 10) | (c(1) << 5) | c(2);
  const product = parseInt(id.slice(3), 16);
  // Stored big-endian: vendor high byte first, product high byte third.
  return ((vendor >> 8) | (vendor & 0xff) << 8 | (product >> 8) << 16 | (product & 0xff) << 24) >>>
    0;
}

/** `EisaId("PNP0501")` as an AML integer. */
export function eisaId(id: string): Uint8Array {
  return integer(eisaIdValue(id));
}

/** `Name(path, value)` (§20.2.5.1, DefName). */
export function name(path: string, value: Aml): Uint8Array {
  return concat(Uint8Array.of(NAME_OP), nameString(path), value);
}

/** `Scope(path) { terms }` (§20.2.5.1, DefScope). */
export function scope(path: string, ...terms: readonly Aml[]): Uint8Array {
  return packaged([SCOPE_OP], nameString(path), ...terms);
}

/** `Device(path) { terms }` (§20.2.5.2, DefDevice). */
export function device(path: string, ...terms: readonly Aml[]): Uint8Array {
  return packaged([EXT_OP_PREFIX, DEVICE_OP], nameString(path), ...terms);
}

/**
 * `Method(path, args, Serialized|NotSerialized) { terms }` (§20.2.5.2,
 * DefMethod); MethodFlags bits 0-2 are the argument count, bit 3 serialized,
 * bits 4-7 the sync level (0).
 */
export function method(
  path: string,
  args: number,
  serialized: boolean,
  ...terms: readonly Aml[]
): Uint8Array {
  if (!Number.isInteger(args) || args < 0 || args > 7) {
    throw new AcpiError(`AML method '${path}' has ${args} arguments; the limit is 7`);
  }
  const flags = args | (serialized ? 0x08 : 0);
  return packaged([METHOD_OP], nameString(path), Uint8Array.of(flags), ...terms);
}

/** `Return(value)` (§20.2.5.3, DefReturn). */
export function returnOp(value: Aml): Uint8Array {
  return concat(Uint8Array.of(RETURN_OP), value);
}

/** `If(predicate) { terms }` (§20.2.5.3, DefIfElse without Else). */
export function ifOp(predicate: Aml, ...terms: readonly Aml[]): Uint8Array {
  return packaged([IF_OP], predicate, ...terms);
}

/** `LEqual(a, b)`, ASL `a == b` (§20.2.5.4, DefLEqual). */
export function lEqual(a: Aml, b: Aml): Uint8Array {
  return concat(Uint8Array.of(LEQUAL_OP), a, b);
}

/** `Notify(path, value)` (§20.2.5.3, DefNotify): `path` names the object notified. */
export function notify(path: string, value: Aml): Uint8Array {
  return concat(Uint8Array.of(NOTIFY_OP), nameString(path), value);
}

/** `ArgN` (§20.2.6.1), N in 0..6. */
export function arg(n: number): Uint8Array {
  if (!Number.isInteger(n) || n < 0 || n > 6) throw new AcpiError(`AML Arg${n} does not exist`);
  return Uint8Array.of(ARG0_OP + n);
}

/** `Package(n) { elements }` (§20.2.5.4, DefPackage): at most 255 elements. */
export function packageOp(...elements: readonly Aml[]): Uint8Array {
  if (elements.length > 255) {
    throw new AcpiError(`AML package of ${elements.length} elements: the limit is 255`);
  }
  return packaged([PACKAGE_OP], Uint8Array.of(elements.length), ...elements);
}

/** `Buffer(n) { bytes }` (§20.2.5.4, DefBuffer) with its size as an integer. */
export function buffer(bytes: Uint8Array): Uint8Array {
  return packaged([BUFFER_OP], integer(bytes.length), bytes);
}
