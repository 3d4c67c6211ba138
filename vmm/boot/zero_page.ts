/**
 * `struct boot_params` (the "zero page") and its embedded `struct
 * setup_header`, as Linux `Documentation/arch/x86/zero-page.rst` and `boot.rst`
 * lay them out. Offsets are from the start of the zero page, which are also the
 * offsets of the setup header inside a bzImage file.
 *
 * @module
 */

/** Size of the zero page. */
export const ZERO_PAGE_SIZE = 0x1000;

/** `struct boot_params` field offsets. */
export const BP = {
  /** u64: physical address of the ACPI RSDP (boot protocol 2.14+). */
  acpiRsdpAddr: 0x070,
  /** u32: high 32 bits of the initrd address. */
  extRamdiskImage: 0x0c0,
  /** u32: high 32 bits of the initrd size. */
  extRamdiskSize: 0x0c4,
  /** u32: high 32 bits of the command line address. */
  extCmdLinePtr: 0x0c8,
  /** u8: number of entries in the e820 table. */
  e820Entries: 0x1e8,
  /** The embedded setup header starts here. */
  setupHeader: 0x1f1,
  /** `struct boot_e820_entry e820_table[128]` (20 bytes each). */
  e820Table: 0x2d0,
} as const;

/** Size of one zero-page e820 entry: u64 addr, u64 size, u32 type. */
export const E820_ENTRY_SIZE = 20;

/** `struct setup_header` field offsets (from the start of the zero page / bzImage). */
export const HDR = {
  /** u8: setup sectors (0 means 4). */
  setupSects: 0x1f1,
  /** u32: protected-mode code size in 16-byte paragraphs. */
  syssize: 0x1f4,
  /** u16: video mode. */
  vidMode: 0x1fa,
  /** u16: 0xAA55. */
  bootFlag: 0x1fe,
  /** u16: a short jump over the header; its second byte gives the header's end (0x202 + it). */
  jump: 0x200,
  /** u32: "HdrS". */
  header: 0x202,
  /** u16: boot protocol version. */
  version: 0x206,
  /** u8: boot loader identifier. */
  typeOfLoader: 0x210,
  /** u8: boot protocol option flags. */
  loadflags: 0x211,
  /** u32: 32-bit entry / load address. */
  code32Start: 0x214,
  /** u32: initrd load address. */
  ramdiskImage: 0x218,
  /** u32: initrd size. */
  ramdiskSize: 0x21c,
  /** u16: end of setup heap (real-mode loaders only). */
  heapEndPtr: 0x224,
  /** u32: command line address. */
  cmdLinePtr: 0x228,
  /** u32: highest address the initrd may occupy. */
  initrdAddrMax: 0x22c,
  /** u32: physical alignment required for a relocatable kernel. */
  kernelAlignment: 0x230,
  /** u8: whether the kernel is relocatable. */
  relocatableKernel: 0x234,
  /** u16: extended load flags. */
  xloadflags: 0x236,
  /** u32: maximum command line size, without its NUL. */
  cmdlineSize: 0x238,
  /** u64: preferred load address. */
  prefAddress: 0x258,
  /** u32: linear memory the kernel needs from its load address. */
  initSize: 0x260,
} as const;

/** End of the setup header area a loader may copy (`struct boot_params` resumes at 0x290). */
export const SETUP_HEADER_MAX_END = 0x290;
/** "HdrS" as a little-endian u32. */
export const HDRS_MAGIC = 0x5372_6448;
/** The boot flag value. */
export const BOOT_FLAG = 0xaa55;
/** `type_of_loader` for an unregistered loader. */
export const LOADER_TYPE_UNDEFINED = 0xff;
/** loadflags: the protected-mode code is loaded at 0x100000 or above. */
export const LOADED_HIGH = 0x01;
/** loadflags: `heap_end_ptr` is valid. */
export const CAN_USE_HEAP = 0x80;
/** xloadflags: the kernel has the 64-bit entry point at load address + 0x200. */
export const XLF_KERNEL_64 = 0x1;
/** The oldest boot protocol with a 64-bit entry and the fields vmkit fills (2.12). */
export const MIN_BOOT_PROTOCOL = 0x020c;
/** The boot protocol version vmkit writes for an ELF kernel that has no header. */
export const ELF_BOOT_PROTOCOL = 0x020f;
/** Offset of the 64-bit entry point from the bzImage load address. */
export const KERNEL_64_ENTRY_OFFSET = 0x200;
