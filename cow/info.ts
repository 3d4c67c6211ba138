/**
 * Describing an image and its chain: formats, sizes, allocation.
 *
 * @module
 */

import { openImage } from "./chain.ts";
import type { DiskImage } from "./disk_image.ts";
import { Qcow2Image } from "./qcow2.ts";
import type { Qcow2Features } from "./qcow2_header.ts";

/** One layer of {@link ImageInfo}. */
export interface LayerInfo {
  /** Path of the layer. */
  path: string;
  /** "raw" or "qcow2". */
  format: "raw" | "qcow2";
  /** Virtual size in bytes. */
  virtualSize: number;
  /** Bytes the file occupies on disk. */
  diskSize: number;
  /** Bytes of guest data this layer holds (raw: the file's allocated bytes). */
  allocatedBytes: number;
  /** qcow2 cluster size, or null for raw. */
  clusterSize: number | null;
  /** Backing name as stored, or null. */
  backingFile: string | null;
  /** Backing format as stored, or null. */
  backingFormat: string | null;
  /** qcow2 header features (qemu-img info's `format-specific`), or null for raw. */
  qcow2: Qcow2Features | null;
}

/** Description of an image and its backing chain, top first. */
export interface ImageInfo {
  /** The layers, top first. */
  chain: LayerInfo[];
}

function layerInfo(d: DiskImage): LayerInfo {
  const st = Deno.statSync(d.path);
  const diskSize = (st.blocks ?? 0) * 512;
  if (d instanceof Qcow2Image) {
    return {
      path: d.path,
      format: "qcow2",
      virtualSize: d.size,
      diskSize,
      allocatedBytes: d.allocatedBytes(),
      clusterSize: d.clusterSize,
      backingFile: d.backingFile,
      backingFormat: d.backingFormat,
      qcow2: d.features,
    };
  }
  return {
    path: d.path,
    format: d.format,
    virtualSize: d.size,
    diskSize,
    allocatedBytes: Math.min(diskSize, d.size),
    clusterSize: null,
    backingFile: null,
    backingFormat: null,
    qcow2: null,
  };
}

/** Options for {@link imageInfo}. */
export interface InfoOptions {
  /** Describe an image another process has open for writing (QEMU's force-share, `-U`). */
  forceShare?: boolean;
}

/**
 * Opens `path` read-only with its chain and describes every layer.
 *
 * @example
 * ```ts
 * import { imageInfo } from "./info.ts";
 * for (const layer of imageInfo("/tmp/top.qcow2").chain) console.log(layer.path, layer.format);
 * ```
 */
export function imageInfo(path: string, options: InfoOptions = {}): ImageInfo {
  const top = openImage(path, {
    readOnly: true,
    // A network backing (iscsi://…) is shown as the last layer's backing name, not opened.
    skipRemoteBacking: true,
    ...(options.forceShare ? { forceShare: true } : {}),
  });
  try {
    const chain: LayerInfo[] = [];
    for (let d: DiskImage | null = top; d !== null; d = d.backing) chain.push(layerInfo(d));
    return { chain };
  } finally {
    top.closeSync();
  }
}
