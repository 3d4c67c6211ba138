/*
 * Linux 64-bit boot protocol side of the 64-bit guest: reads the zero page
 * (struct boot_params) that RSI pointed at.
 */
#include "guest.h"

#define ZP_ACPI_RSDP_ADDR 0x070
#define ZP_EXT_RAMDISK_IMAGE 0x0c0
#define ZP_EXT_RAMDISK_SIZE 0x0c4
#define ZP_EXT_CMD_LINE_PTR 0x0c8
#define ZP_E820_ENTRIES 0x1e8
#define ZP_SETUP_SECTS 0x1f1
#define ZP_RAMDISK_IMAGE 0x218
#define ZP_RAMDISK_SIZE 0x21c
#define ZP_CMD_LINE_PTR 0x228
#define ZP_E820_TABLE 0x2d0

static struct boot_info bi;

static uint32_t rd32(const uint8_t *zp, unsigned off)
{
	uint32_t v;
	memcpy(&v, zp + off, 4);
	return v;
}

static uint64_t rd64(const uint8_t *zp, unsigned off)
{
	uint64_t v;
	memcpy(&v, zp + off, 8);
	return v;
}

void linux_main(const uint8_t *zp) __attribute__((noreturn));

void linux_main(const uint8_t *zp)
{
	/* A bzImage's setup header (copied into the zero page) has setup_sects != 0. */
	bi.boot = zp[ZP_SETUP_SECTS] ? "bzimage" : "linux64";
	uint64_t cmd = rd32(zp, ZP_CMD_LINE_PTR) | ((uint64_t)rd32(zp, ZP_EXT_CMD_LINE_PTR) << 32);
	bi.cmdline = cmd ? (const char *)(uintptr_t)cmd : "";
	unsigned n = zp[ZP_E820_ENTRIES];
	for (unsigned i = 0; i < n && bi.nmem < MAX_MEM; i++) {
		unsigned off = ZP_E820_TABLE + i * 20;
		bi.mem[bi.nmem].addr = rd64(zp, off);
		bi.mem[bi.nmem].size = rd64(zp, off + 8);
		bi.mem[bi.nmem].type = rd32(zp, off + 16);
		bi.nmem++;
	}
	bi.initrd_addr = rd32(zp, ZP_RAMDISK_IMAGE) |
			 ((uint64_t)rd32(zp, ZP_EXT_RAMDISK_IMAGE) << 32);
	bi.initrd_size = rd32(zp, ZP_RAMDISK_SIZE) |
			 ((uint64_t)rd32(zp, ZP_EXT_RAMDISK_SIZE) << 32);
	bi.rsdp = rd64(zp, ZP_ACPI_RSDP_ADDR);
	guest_main(&bi);
}
