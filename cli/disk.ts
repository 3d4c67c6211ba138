/**
 * `vmkit disk`: create, inspect, check, copy, commit and stream qcow2/raw
 * images (see `cow/`).
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  checkImage,
  commit,
  copyParent,
  CowError,
  createImage,
  type ImageFormat,
  imageInfo,
  openImage,
  type Progress,
  resolveBackingPath,
  stream,
} from "../cow/mod.ts";
import { isUsageError, UsageError, usageFailure } from "./usage.ts";

const USAGE = `usage: vmkit disk <command> [options]

commands:
  create FILE (--size BYTES | --backing PARENT [--backing-format raw|qcow2])
              [--size BYTES] [--cluster-size N] [--format qcow2|raw]
  info FILE [--json]            the chain, sizes and allocation
  check FILE                    consistency check (exit 2: errors, 3: leaks only)
  copy SRC DST [--format qcow2|raw] [--cluster-size N] [--bandwidth BYTES_PER_S]
  commit FILE [--bandwidth BYTES_PER_S]   copy FILE's clusters into its backing file
  stream FILE [--base PATH] [--bandwidth BYTES_PER_S]
                                pull backing data into FILE and drop the backing files
                                (above PATH, if given)

Sizes take K, M, G, T suffixes (powers of 1024).`;

/** Parses "64K", "1G", "4096" into bytes. */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)([KMGT]?)i?B?$/i.exec(text.trim());
  if (m === null) throw new UsageError(`${what} '${text}' is not a size (e.g. 4096, 64K, 1G)`);
  const units: Record<string, number> = { "": 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };
  const n = Number(m[1]) * (units[(m[2] ?? "").toUpperCase()] ?? 1);
  if (!Number.isSafeInteger(n)) throw new UsageError(`${what} '${text}' is too large`);
  return n;
}

function formatArg(v: string | undefined, what: string): ImageFormat | undefined {
  if (v === undefined) return undefined;
  if (v !== "raw" && v !== "qcow2") {
    throw new UsageError(`${what} must be raw or qcow2, got '${v}'`);
  }
  return v;
}

function human(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(1)} ${units[i]}`;
}

/** A progress bar on stderr, redrawn at most every 100 ms. */
function progressBar(label: string): { update: (p: Progress) => void; done: () => void } {
  const enc = new TextEncoder();
  let last = 0;
  let shown = false;
  const draw = (p: Progress): void => {
    const frac = p.total === 0 ? 1 : p.done / p.total;
    const width = 30;
    const fill = Math.round(frac * width);
    const bar = "#".repeat(fill) + ".".repeat(width - fill);
    const line = `\r${label} [${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ` +
      `${human(p.done)} / ${human(p.total)}`;
    Deno.stderr.writeSync(enc.encode(line));
    shown = true;
  };
  return {
    update(p: Progress): void {
      const now = performance.now();
      if (now - last < 100 && p.done < p.total) return;
      last = now;
      draw(p);
    },
    done(): void {
      if (shown) Deno.stderr.writeSync(enc.encode("\n"));
    },
  };
}

function one(positionals: string[], names: string[]): string[] {
  if (positionals.length !== names.length) {
    throw new UsageError(`expected ${names.join(" ")}, got ${positionals.length} arguments`);
  }
  return positionals;
}

function create(args: string[]): number {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      size: { type: "string" },
      backing: { type: "string" },
      "backing-format": { type: "string" },
      "cluster-size": { type: "string" },
      format: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return help();
  const [file] = one(positionals, ["FILE"]);
  if (file === undefined) throw new UsageError("missing FILE");
  if (values.size === undefined && values.backing === undefined) {
    throw new UsageError("create needs --size BYTES or --backing PARENT");
  }
  const size = values.size !== undefined ? parseSize(values.size, "--size") : undefined;
  const backingFormat = formatArg(values["backing-format"], "--backing-format");
  const format = formatArg(values.format, "--format");
  if (values.backing !== undefined) {
    const ppath = resolveBackingPath(file, values.backing);
    try {
      Deno.statSync(ppath);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        throw new CowError(`backing file '${values.backing}' (${ppath}) does not exist`);
      }
      throw err;
    }
    const parent = openImage(resolveBackingPath(file, values.backing), {
      readOnly: true,
      ...(backingFormat ? { format: backingFormat } : {}),
    });
    const psize = parent.size;
    parent.closeSync();
    if (size !== undefined && size < psize) {
      throw new CowError(
        `size mismatch: --size ${size} is smaller than the backing file (${psize} bytes); ` +
          `omit --size to use the parent's size`,
      );
    }
  }
  const img = createImage(file, {
    ...(size !== undefined ? { size } : {}),
    ...(values.backing !== undefined ? { backingFile: values.backing } : {}),
    ...(backingFormat ? { backingFormat } : {}),
    ...(values["cluster-size"] !== undefined
      ? { clusterSize: parseSize(values["cluster-size"], "--cluster-size") }
      : {}),
    ...(format ? { format } : {}),
  });
  const s = img.size;
  img.closeSync();
  console.log(`created ${file} (${img.format}, ${s} bytes)`);
  return 0;
}

function info(args: string[]): number {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: { json: { type: "boolean" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) return help();
  const [file] = one(positionals, ["FILE"]);
  if (file === undefined) throw new UsageError("missing FILE");
  const inf = imageInfo(file);
  if (values.json) {
    console.log(JSON.stringify(inf, null, 2));
    return 0;
  }
  inf.chain.forEach((l, i) => {
    if (i > 0) console.log("");
    console.log(`image: ${l.path}`);
    console.log(`file format: ${l.format}`);
    console.log(`virtual size: ${human(l.virtualSize)} (${l.virtualSize} bytes)`);
    console.log(`disk size: ${human(l.diskSize)}`);
    console.log(`allocated: ${human(l.allocatedBytes)}`);
    if (l.clusterSize !== null) console.log(`cluster_size: ${l.clusterSize}`);
    if (l.backingFile !== null) console.log(`backing file: ${l.backingFile}`);
    if (l.backingFormat !== null) console.log(`backing file format: ${l.backingFormat}`);
  });
  return 0;
}

function check(args: string[]): number {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: { help: { type: "boolean", short: "h" } },
  });
  if (values.help) return help();
  const [file] = one(positionals, ["FILE"]);
  if (file === undefined) throw new UsageError("missing FILE");
  const r = checkImage(file);
  for (const e of r.errors) console.log(`ERROR ${e}`);
  if (r.errors.length > 0) {
    console.log(`\n${r.errors.length} errors were found on the image.`);
  } else {
    console.log("No errors were found on the image.");
  }
  if (r.leaks > 0) console.log(`${r.leaks} leaked clusters were found on the image.`);
  const pct = r.totalClusters === 0 ? 0 : (100 * r.allocatedClusters) / r.totalClusters;
  console.log(`${r.allocatedClusters}/${r.totalClusters} = ${pct.toFixed(2)}% allocated`);
  console.log(`Image end offset: ${r.imageEndOffset}`);
  return r.errors.length > 0 ? 2 : r.leaks > 0 ? 3 : 0;
}

async function copy(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      format: { type: "string" },
      "cluster-size": { type: "string" },
      bandwidth: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return help();
  const [src, dst] = one(positionals, ["SRC", "DST"]);
  if (src === undefined || dst === undefined) throw new UsageError("missing SRC or DST");
  const bar = progressBar("copy");
  try {
    const format = formatArg(values.format, "--format");
    const r = await copyParent(src, dst, {
      onProgress: bar.update,
      ...(format ? { format } : {}),
      ...(values["cluster-size"] !== undefined
        ? { clusterSize: parseSize(values["cluster-size"], "--cluster-size") }
        : {}),
      ...(values.bandwidth !== undefined
        ? { bandwidth: parseSize(values.bandwidth, "--bandwidth") }
        : {}),
    });
    bar.done();
    console.log(`copied ${src} to ${dst} (${r.size} bytes, ${r.written} written)`);
  } catch (err) {
    bar.done();
    throw err;
  }
  return 0;
}

async function commitCmd(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: { bandwidth: { type: "string" }, help: { type: "boolean", short: "h" } },
  });
  if (values.help) return help();
  const [file] = one(positionals, ["FILE"]);
  if (file === undefined) throw new UsageError("missing FILE");
  const bar = progressBar("commit");
  try {
    const r = await commit(file, {
      onProgress: bar.update,
      ...(values.bandwidth !== undefined
        ? { bandwidth: parseSize(values.bandwidth, "--bandwidth") }
        : {}),
    });
    bar.done();
    const parentPath = r.parent.path;
    r.parent.closeSync();
    const from = r.resumedFrom > 0 ? ` (resumed at ${r.resumedFrom})` : "";
    console.log(`committed ${file} into ${parentPath}: ${r.copied} bytes copied${from}`);
  } catch (err) {
    bar.done();
    throw err;
  }
  return 0;
}

async function streamCmd(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    strict: true,
    allowPositionals: true,
    options: {
      base: { type: "string" },
      bandwidth: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return help();
  const [file] = one(positionals, ["FILE"]);
  if (file === undefined) throw new UsageError("missing FILE");
  const bar = progressBar("stream");
  try {
    const r = await stream(file, {
      onProgress: bar.update,
      ...(values.base !== undefined ? { base: values.base } : {}),
      ...(values.bandwidth !== undefined
        ? { bandwidth: parseSize(values.bandwidth, "--bandwidth") }
        : {}),
    });
    bar.done();
    console.log(
      `streamed into ${file}: ${r.copied} bytes copied; backing file now ` +
        (r.backingFile ?? "(none)"),
    );
  } catch (err) {
    bar.done();
    throw err;
  }
  return 0;
}

function help(): number {
  console.log(USAGE);
  return 0;
}

/** Runs `vmkit disk`; returns the exit status. */
export async function main(args: string[]): Promise<number> {
  const [cmd, ...rest] = args;
  try {
    switch (cmd) {
      case undefined:
        console.error(USAGE);
        return 2;
      case "--help":
      case "-h":
      case "help":
        return help();
      case "create":
        return create(rest);
      case "info":
        return info(rest);
      case "check":
        return check(rest);
      case "copy":
        return await copy(rest);
      case "commit":
        return await commitCmd(rest);
      case "stream":
        return await streamCmd(rest);
      default:
        console.error(`vmkit disk: unknown command '${cmd}' (try 'vmkit disk --help')`);
        return 2;
    }
  } catch (err) {
    if (isUsageError(err)) return usageFailure(`disk ${cmd}`, err);
    if (err instanceof CowError) {
      console.error(`vmkit disk ${cmd}: ${err.message}`);
      return 1;
    }
    throw err;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
