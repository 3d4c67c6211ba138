/**
 * `vmkit disk`: create, inspect, check, copy, commit and stream qcow2/raw
 * images (see `cow/`), with qemu-img's conventions: `--output json` with
 * kebab-case keys, `disk check` exit statuses 0/1/2/3/63, progress on a
 * terminal (`-p` forces it, `-q` silences it).
 *
 * @module
 */

import {
  checkImage,
  commit,
  copyParent,
  CowError,
  createImage,
  imageInfo,
  isRemoteName,
  type LayerInfo,
  openImage,
  probeFormat,
  type Qcow2Features,
  QcowError,
  resolveBackingPath,
  stream,
  UnsupportedFeatureError,
} from "../cow/mod.ts";
import { command, type Entry } from "./command.ts";
import { Exit } from "./exit.ts";
import { choice, flag, parseSizeText, size, str } from "./options.ts";
import { UsageError } from "./usage.ts";

const FORMATS = ["qcow2", "raw"] as const;

/** Corrupt qcow2 metadata is exit 2; every other error of `cow/` is 1. */
function diskExit(err: Error): number {
  if (err instanceof UnsupportedFeatureError) return Exit.FAILURE;
  if (err instanceof QcowError) return Exit.CORRUPT;
  return Exit.FAILURE;
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

const bandwidth = size("BYTES_PER_S", "limit the copy rate", { min: 1 });
/** qemu-img's -U: look at an image another process is writing (no write lock refused). */
const forceShare = flag("open read-only without refusing other writers (qemu-img's -U)", {
  short: "U",
});

const create = command({
  name: "create",
  summary: "create a qcow2 or raw image, optionally over a backing file",
  args: ["FILE", "[SIZE]"],
  description: "Give --size (or SIZE), --backing or both (the size defaults to the backing\n" +
    "file's). Sizes take K, M, G, T suffixes (powers of 1024). qemu-img create's\n" +
    "arguments work too: vmkit disk create -f qcow2 -b PARENT -F raw FILE SIZE.",
  options: {
    size: size("BYTES", "virtual size"),
    backing: str("PARENT", "backing file (relative to FILE's folder)", { short: "b" }),
    "backing-format": choice(FORMATS, "format of the backing file (default: probed)", {
      short: "F",
    }),
    "cluster-size": size("BYTES", "qcow2 cluster size (512 to 2M, a power of two)"),
    format: choice(FORMATS, "format of the new image", { default: "qcow2", short: "f" }),
  },
  output: true,
  exitCode: diskExit,
  run(ctx) {
    const [file = "", sizeText] = ctx.positionals;
    const o = { ...ctx.values };
    if (sizeText !== undefined) {
      if (o.size !== undefined) throw new UsageError("give the size once: --size or SIZE");
      const n = parseSizeText(sizeText);
      if (!Number.isSafeInteger(n)) {
        throw new UsageError(`SIZE '${sizeText}' is not a size (e.g. 4096, 64K, 1G)`);
      }
      o.size = n;
    }
    if (o.size === undefined && o.backing === undefined) {
      throw new UsageError("create needs --size BYTES or --backing PARENT");
    }
    if (o.backing !== undefined) {
      const ppath = resolveBackingPath(file, o.backing);
      try {
        Deno.statSync(ppath);
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) {
          throw new CowError(`backing file '${o.backing}' (${ppath}) does not exist`);
        }
        throw err;
      }
      const parent = openImage(ppath, {
        readOnly: true,
        ...(o["backing-format"] ? { format: o["backing-format"] } : {}),
      });
      const psize = parent.size;
      parent.closeSync();
      if (o.size !== undefined && o.size < psize) {
        throw new CowError(
          `size mismatch: --size ${o.size} is smaller than the backing file (${psize} bytes); ` +
            `omit --size to use the parent's size`,
        );
      }
    }
    const img = createImage(file, {
      ...(o.size !== undefined ? { size: o.size } : {}),
      ...(o.backing !== undefined ? { backingFile: o.backing } : {}),
      ...(o["backing-format"] ? { backingFormat: o["backing-format"] } : {}),
      ...(o["cluster-size"] !== undefined ? { clusterSize: o["cluster-size"] } : {}),
      format: o.format,
    });
    const s = img.size;
    const format = img.format;
    img.closeSync();
    ctx.print(
      { filename: file, format, virtualSize: s },
      () => `created ${file} (${format}, ${s} bytes)`,
    );
    return Exit.OK;
  },
});

/**
 * The backing name joined to the image's name as QEMU's `path_combine` does for
 * `full-backing-filename`: beside the image as it was named, not made absolute.
 */
function pathCombine(image: string, name: string): string {
  if (name.startsWith("/") || isRemoteName(name)) return name;
  const slash = image.lastIndexOf("/");
  return slash < 0 ? name : image.slice(0, slash + 1) + name;
}

/**
 * The chain's names as qemu-img prints them: the top as given, each backing file
 * joined beside the layer above it ({@link pathCombine}).
 */
function chainNames(chain: readonly LayerInfo[]): string[] {
  const names: string[] = [];
  let prev: string | undefined;
  let backing: string | null = null;
  for (const l of chain) {
    prev = prev === undefined || backing === null ? l.path : pathCombine(prev, backing);
    names.push(prev);
    backing = l.backingFile;
  }
  return names;
}

/** One layer as qemu-img info's JSON names it; `name` is its name in the chain. */
function layerJson(l: LayerInfo, name: string): Record<string, unknown> {
  return {
    filename: name,
    format: l.format,
    "virtual-size": l.virtualSize,
    "actual-size": l.diskSize,
    "allocated-bytes": l.allocatedBytes,
    ...(l.clusterSize === null ? {} : { "cluster-size": l.clusterSize }),
    ...(l.backingFile === null ? {} : {
      "backing-filename": l.backingFile,
      "full-backing-filename": pathCombine(name, l.backingFile),
    }),
    ...(l.backingFormat === null ? {} : { "backing-filename-format": l.backingFormat }),
    "dirty-flag": l.qcow2?.dirty ?? false,
    ...(l.qcow2 === null ? {} : { "format-specific": { type: "qcow2", data: qcow2Data(l.qcow2) } }),
  };
}

/** qemu-img info's `format-specific` data of a qcow2 layer (version 2 shows fewer keys). */
function qcow2Data(f: Qcow2Features): Record<string, unknown> {
  const common = { "compression-type": f.compressionType, "refcount-bits": f.refcountBits };
  if (f.version < 3) return { compat: "0.10", ...common };
  return {
    compat: "1.1",
    "compression-type": f.compressionType,
    "lazy-refcounts": f.lazyRefcounts,
    "refcount-bits": f.refcountBits,
    corrupt: f.corrupt,
    "extended-l2": f.extendedL2,
  };
}

const info = command({
  name: "info",
  summary: "show an image's format, sizes, allocation and backing file",
  args: ["FILE"],
  options: {
    "backing-chain": flag("show every layer of the backing chain (JSON: an array)"),
    "force-share": forceShare,
  },
  output: true,
  exitCode: diskExit,
  run(ctx) {
    const [file = ""] = ctx.positionals;
    const all = ctx.values["backing-chain"];
    const chain = imageInfo(file, { forceShare: ctx.values["force-share"] }).chain;
    const layers = all ? chain : chain.slice(0, 1);
    const names = chainNames(chain);
    const described = layers.map((l, i) => layerJson(l, names[i] ?? l.path));
    ctx.print(all ? described : described[0], () =>
      layers.map((l, i) =>
        [
          `image: ${names[i] ?? l.path}`,
          `file format: ${l.format}`,
          `virtual size: ${human(l.virtualSize)} (${l.virtualSize} bytes)`,
          `disk size: ${human(l.diskSize)}`,
          `allocated: ${human(l.allocatedBytes)}`,
          ...(l.clusterSize === null ? [] : [`cluster_size: ${l.clusterSize}`]),
          ...(l.backingFile === null ? [] : [`backing file: ${l.backingFile}`]),
          ...(l.backingFormat === null ? [] : [`backing file format: ${l.backingFormat}`]),
          ...(l.qcow2 === null ? [] : [
            "Format specific information:",
            ...Object.entries(qcow2Data(l.qcow2)).map(([k, v]) =>
              `    ${k.replaceAll("-", " ")}: ${v}`
            ),
          ]),
        ].join("\n")
      ).join("\n\n"));
    return Exit.OK;
  },
});

const check = command({
  name: "check",
  summary: "check a qcow2 image's metadata for corruption and leaks",
  args: ["FILE"],
  description: "Exit status as qemu-img check: 0 clean, 1 could not check, 2 corruptions,\n" +
    "3 leaked clusters only, 63 the format has no checks (raw).",
  options: { "force-share": forceShare },
  output: true,
  exitCode: () => Exit.FAILURE,
  run(ctx) {
    const [file = ""] = ctx.positionals;
    if (probeFormat(file) === "raw") {
      console.error(
        `vmkit disk check: '${file}' is not a qcow2 image (raw): this format has no checks`,
      );
      return Exit.UNSUPPORTED;
    }
    const r = checkImage(file, { forceShare: ctx.values["force-share"] });
    ctx.print({
      filename: file,
      format: "qcow2",
      checkErrors: 0,
      corruptions: r.errors.length,
      leaks: r.leaks,
      imageEndOffset: r.imageEndOffset,
      totalClusters: r.totalClusters,
      allocatedClusters: r.allocatedClusters,
      fragmentedClusters: r.fragmentedClusters,
      compressedClusters: r.compressedClusters,
      errors: r.errors,
    }, () => {
      // qemu-img check's report: the findings one per line on stderr, the summary on stdout.
      for (const e of r.errors) console.error(`ERROR ${e}`);
      const lines: string[] = [];
      if (r.errors.length === 0 && r.leaks === 0) lines.push("No errors were found on the image.");
      if (r.errors.length > 0) {
        lines.push(
          `\n${r.errors.length} errors were found on the image.`,
          "Data may be corrupted, or further writes to the image may corrupt it.",
        );
      }
      if (r.leaks > 0) {
        lines.push(
          `\n${r.leaks} leaked clusters were found on the image.`,
          "This means waste of disk space, but no harm to data.",
        );
      }
      // qemu-img check's line: fragmented and compressed are shares of the allocated clusters.
      const pct = r.totalClusters === 0 ? 0 : (100 * r.allocatedClusters) / r.totalClusters;
      const of = (n: number) => r.allocatedClusters === 0 ? 0 : (100 * n) / r.allocatedClusters;
      if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
        lines.push(
          `${r.allocatedClusters}/${r.totalClusters} = ${pct.toFixed(2)}% allocated, ` +
            `${of(r.fragmentedClusters).toFixed(2)}% fragmented, ` +
            `${of(r.compressedClusters).toFixed(2)}% compressed clusters`,
        );
      }
      if (r.imageEndOffset !== 0) lines.push(`Image end offset: ${r.imageEndOffset}`);
      return lines.join("\n");
    });
    return r.errors.length > 0 ? Exit.CORRUPT : r.leaks > 0 ? Exit.LEAKS : Exit.OK;
  },
});

const copy = command({
  name: "copy",
  summary: "copy what SRC reads as (its chain flattened) into a new image DST",
  args: ["SRC", "DST"],
  options: {
    format: choice(FORMATS, "format of DST", { default: "qcow2" }),
    "cluster-size": size("BYTES", "qcow2 cluster size of DST"),
    bandwidth,
    "force-share": forceShare,
  },
  output: true,
  progress: true,
  exitCode: diskExit,
  async run(ctx) {
    const [src = "", dst = ""] = ctx.positionals;
    const o = ctx.values;
    const bar = ctx.progress("copy");
    try {
      const r = await copyParent(src, dst, {
        onProgress: bar.update,
        format: o.format,
        ...(o["cluster-size"] !== undefined ? { clusterSize: o["cluster-size"] } : {}),
        ...(o.bandwidth !== undefined ? { bandwidth: o.bandwidth } : {}),
        forceShare: o["force-share"],
      });
      bar.done();
      ctx.print(
        { source: src, destination: dst, size: r.size, written: r.written },
        () => `copied ${src} to ${dst} (${r.size} bytes, ${r.written} written)`,
      );
    } finally {
      bar.done();
    }
    return Exit.OK;
  },
});

const commitCmd = command({
  name: "commit",
  summary: "copy FILE's clusters into its backing file",
  args: ["FILE"],
  description: "An interrupted commit resumes where it stopped when run again.",
  options: { bandwidth },
  output: true,
  progress: true,
  exitCode: diskExit,
  async run(ctx) {
    const [file = ""] = ctx.positionals;
    const bar = ctx.progress("commit");
    try {
      const r = await commit(file, {
        onProgress: bar.update,
        ...(ctx.values.bandwidth !== undefined ? { bandwidth: ctx.values.bandwidth } : {}),
      });
      bar.done();
      const parentPath = r.parent.path;
      r.parent.closeSync();
      const from = r.resumedFrom > 0
        ? ` (resumed at ${r.resumedFrom})`
        : r.restarted
        ? " (restarted: the overlay was written since the interrupted commit)"
        : "";
      ctx.print(
        {
          filename: file,
          backingFilename: parentPath,
          copied: r.copied,
          resumedFrom: r.resumedFrom,
          restarted: r.restarted,
        },
        () => `committed ${file} into ${parentPath}: ${r.copied} bytes copied${from}`,
      );
    } finally {
      bar.done();
    }
    return Exit.OK;
  },
});

const streamCmd = command({
  name: "stream",
  summary: "pull backing data into FILE and drop its backing files (above --base)",
  args: ["FILE"],
  options: {
    base: str("PATH", "keep this backing file and those below it"),
    bandwidth,
  },
  output: true,
  progress: true,
  exitCode: diskExit,
  async run(ctx) {
    const [file = ""] = ctx.positionals;
    const o = ctx.values;
    const bar = ctx.progress("stream");
    try {
      const r = await stream(file, {
        onProgress: bar.update,
        ...(o.base !== undefined ? { base: o.base } : {}),
        ...(o.bandwidth !== undefined ? { bandwidth: o.bandwidth } : {}),
      });
      bar.done();
      ctx.print(
        { filename: file, copied: r.copied, backingFilename: r.backingFile },
        () =>
          `streamed into ${file}: ${r.copied} bytes copied; backing file now ` +
          (r.backingFile ?? "(none)"),
      );
    } finally {
      bar.done();
    }
    return Exit.OK;
  },
});

/** The `vmkit disk` command group. */
export const entry: Entry = {
  name: "disk",
  summary: "copy-on-write disk images (qcow2)",
  commands: [create, info, check, copy, commitCmd, streamCmd],
};
