/*
 * mode=acpi: finds the ACPI tables the way an OS does and prints what it
 * finds, checking every checksum:
 *
 *   acpi rsdp boot <addr> scan <addr>       the loader's pointer; the 0xE0000-0xFFFFF scan
 *   acpi rsdp rev <r> xsdt <addr>
 *   acpi table <SIG> at <addr> len <n>      each XSDT entry, and the FADT's DSDT
 *   acpi fadt flags <hex> dsdt <addr>
 *   acpi madt lapic <uid> apic <id> flags <f>
 *   acpi madt ioapic <id> at <addr> gsi <base>
 *   acpi madt override irq <irq> gsi <gsi> flags <f>
 *   acpi madt nmi uid <uid> lint <n>
 *   acpi cpus <n> boot apic <id> listed
 *   acpi ok                                  or "acpi bad: <why>"
 *
 * mode=vmgenid (64-bit guest: this host's emulator cannot IRET in protected
 * mode): reads the VM generation id device out of the DSDT's AML (the
 * address `\_SB_.VGEN.ADDR` returns, the GSI of the Generic Event Device's
 * `_CRS`), routes that IOAPIC pin to itself with no timer, and sleeps; every
 * interrupt re-reads the id, as Linux's vmgenid driver does on `Notify(0x80)`:
 *
 *   vmgenid addr <addr> gsi <gsi> id <32 hex digits>
 *   vmgenid ready
 *   vmgenid notified <n> id <32 hex digits>  (after each interrupt; powers off after 2)
 *
 * Tables are read at their physical addresses: the PVH guest runs with
 * paging off, the 64-bit guest with a 4 GiB identity map.
 */
#include "guest.h"
#include "virtio_mmio.h" /* irq_init, irq_wait, irq_count */

#define BIOS_SCAN_START 0xe0000u
#define BIOS_SCAN_END 0x100000u
#define LAPIC_ID_REG 0xfee00020u

struct sdt {
	char sig[4];
	uint32_t length;
	uint8_t revision;
	uint8_t checksum;
	char oem_id[6];
	char oem_table_id[8];
	uint32_t oem_revision;
	uint32_t creator_id;
	uint32_t creator_revision;
} __attribute__((packed));

struct rsdp {
	char sig[8];
	uint8_t checksum;
	char oem_id[6];
	uint8_t revision;
	uint32_t rsdt;
	uint32_t length;
	uint64_t xsdt;
	uint8_t ext_checksum;
	uint8_t reserved[3];
} __attribute__((packed));

static const uint8_t *phys(uint64_t a)
{
	return (const uint8_t *)(uintptr_t)a;
}

static uint8_t sum(const uint8_t *p, uint32_t n)
{
	uint8_t s = 0;
	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

static int same(const void *a, const char *b, unsigned n)
{
	const char *p = a;
	for (unsigned i = 0; i < n; i++)
		if (p[i] != b[i])
			return 0;
	return 1;
}

static uint32_t rd32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static uint64_t rd64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static int bad(const char *why)
{
	struct line l = {.len = 0};
	add_str(&l, "acpi bad: ");
	add_str(&l, why);
	emit(&l);
	return 1;
}

static uint64_t scan_rsdp(void)
{
	for (uint32_t a = BIOS_SCAN_START; a < BIOS_SCAN_END; a += 16)
		if (same(phys(a), "RSD PTR ", 8) && sum(phys(a), 20) == 0)
			return a;
	return 0;
}

/* Prints the table line; 0 if the table at addr has signature sig (or any, sig 0) and sums to 0. */
static int check_table(uint64_t addr, const char *sig)
{
	const struct sdt *t = (const struct sdt *)phys(addr);
	struct line l = {.len = 0};
	char name[5] = {t->sig[0], t->sig[1], t->sig[2], t->sig[3], 0};
	add_str(&l, "acpi table ");
	add_str(&l, name);
	add_str(&l, " at ");
	add_hex(&l, addr);
	add_str(&l, " len ");
	add_dec(&l, t->length);
	emit(&l);
	if (sig && !same(t->sig, sig, 4))
		return bad("unexpected signature");
	if (t->length < sizeof(struct sdt) || t->length > 0x100000)
		return bad("impossible table length");
	if (sum(phys(addr), t->length) != 0)
		return bad("table checksum");
	return 0;
}

static int walk_madt(uint64_t addr, uint32_t *cpus, int *boot_listed)
{
	const struct sdt *t = (const struct sdt *)phys(addr);
	const uint8_t *p = phys(addr) + sizeof(struct sdt) + 8; /* LAPIC address, flags */
	const uint8_t *end = phys(addr) + t->length;
	uint32_t boot_apic = rd32(phys(LAPIC_ID_REG)) >> 24;
	struct line l = {.len = 0};
	while (p + 2 <= end) {
		uint8_t type = p[0], len = p[1];
		if (len < 2 || p + len > end)
			return bad("MADT entry length");
		if (type == 0 && len >= 8) {
			uint32_t flags = rd32(p + 4);
			add_str(&l, "acpi madt lapic ");
			add_dec(&l, p[2]);
			add_str(&l, " apic ");
			add_dec(&l, p[3]);
			add_str(&l, " flags ");
			add_dec(&l, flags);
			emit(&l);
			if (flags & 1) {
				(*cpus)++;
				if (p[3] == boot_apic)
					*boot_listed = 1;
			}
		} else if (type == 1 && len >= 12) {
			add_str(&l, "acpi madt ioapic ");
			add_dec(&l, p[2]);
			add_str(&l, " at ");
			add_hex(&l, rd32(p + 4));
			add_str(&l, " gsi ");
			add_dec(&l, rd32(p + 8));
			emit(&l);
		} else if (type == 2 && len >= 10) {
			add_str(&l, "acpi madt override irq ");
			add_dec(&l, p[3]);
			add_str(&l, " gsi ");
			add_dec(&l, rd32(p + 4));
			add_str(&l, " flags ");
			add_dec(&l, (uint32_t)p[8] | (uint32_t)p[9] << 8);
			emit(&l);
		} else if (type == 4 && len >= 6) {
			add_str(&l, "acpi madt nmi uid ");
			add_dec(&l, p[2]);
			add_str(&l, " lint ");
			add_dec(&l, p[5]);
			emit(&l);
		}
		p += len;
	}
	add_str(&l, "acpi cpus ");
	add_dec(&l, *cpus);
	add_str(&l, " boot apic ");
	add_dec(&l, boot_apic);
	add_str(&l, *boot_listed ? " listed" : " not listed");
	emit(&l);
	return 0;
}

int acpi_check(const struct boot_info *bi)
{
	struct line l = {.len = 0};
	uint64_t scanned = scan_rsdp();
	add_str(&l, "acpi rsdp boot ");
	add_hex(&l, bi->rsdp);
	add_str(&l, " scan ");
	add_hex(&l, scanned);
	emit(&l);
	if (!scanned)
		return bad("no RSDP in the BIOS area");
	if (bi->rsdp && bi->rsdp != scanned)
		return bad("boot RSDP differs from the scanned one");
	const struct rsdp *r = (const struct rsdp *)phys(scanned);
	add_str(&l, "acpi rsdp rev ");
	add_dec(&l, r->revision);
	add_str(&l, " xsdt ");
	add_hex(&l, r->xsdt);
	emit(&l);
	if (r->revision < 2 || r->length < sizeof(struct rsdp) || sum(phys(scanned), r->length) != 0)
		return bad("RSDP extended checksum or revision");
	if (check_table(r->xsdt, "XSDT"))
		return 1;
	const struct sdt *x = (const struct sdt *)phys(r->xsdt);
	uint32_t n = (x->length - sizeof(struct sdt)) / 8;
	int have_fadt = 0, have_madt = 0, have_dsdt = 0, boot_listed = 0;
	uint32_t cpus = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t a = rd64(phys(r->xsdt) + sizeof(struct sdt) + 8 * i);
		if (check_table(a, 0))
			return 1;
		const struct sdt *t = (const struct sdt *)phys(a);
		if (same(t->sig, "FACP", 4)) {
			uint32_t flags = rd32(phys(a) + 112);
			uint64_t dsdt = rd64(phys(a) + 140);
			add_str(&l, "acpi fadt flags ");
			add_hex(&l, flags);
			add_str(&l, " dsdt ");
			add_hex(&l, dsdt);
			emit(&l);
			if (check_table(dsdt, "DSDT"))
				return 1;
			have_fadt = have_dsdt = 1;
		} else if (same(t->sig, "APIC", 4)) {
			if (walk_madt(a, &cpus, &boot_listed))
				return 1;
			have_madt = 1;
		}
	}
	if (!have_fadt || !have_madt || !have_dsdt)
		return bad("missing FADT, MADT or DSDT");
	if (!boot_listed)
		return bad("boot CPU not listed in the MADT");
	puts_serial("acpi ok\n");
	return 0;
}

/* ---- mode=vmgenid ---- */

/* The DSDT's address, through the scanned RSDP, XSDT and FADT (0 if any is missing). */
static uint64_t find_dsdt(void)
{
	uint64_t rsdp = scan_rsdp();
	if (!rsdp)
		return 0;
	uint64_t xsdt = ((const struct rsdp *)phys(rsdp))->xsdt;
	const struct sdt *x = (const struct sdt *)phys(xsdt);
	for (uint32_t i = 0; i < (x->length - sizeof(struct sdt)) / 8; i++) {
		uint64_t a = rd64(phys(xsdt) + sizeof(struct sdt) + 8 * i);
		if (same(phys(a), "FACP", 4))
			return rd64(phys(a) + 140);
	}
	return 0;
}

/* Offset of the first `n` bytes equal to `pat` in [from, end), or end. */
static uint32_t find(const uint8_t *p, uint32_t from, uint32_t end, const char *pat, unsigned n)
{
	for (uint32_t i = from; i + n <= end; i++)
		if (same(p + i, pat, n))
			return i;
	return end;
}

/* Decodes the AML integer at p[*at] (Zero, One, Byte/Word/DWord/QWord constants). */
static uint64_t aml_int(const uint8_t *p, uint32_t *at)
{
	uint8_t op = p[(*at)++];
	unsigned n = op == 0x0a ? 1 : op == 0x0b ? 2 : op == 0x0c ? 4 : op == 0x0e ? 8 : 0;
	uint64_t v = op == 0x01;
	for (unsigned i = 0; i < n; i++)
		v |= (uint64_t)p[(*at)++] << (8 * i);
	return v;
}

static void add_id(struct line *l, const uint8_t *id)
{
	static const char hexd[] = "0123456789abcdef";
	char s[33];
	for (int i = 0; i < 16; i++) {
		s[2 * i] = hexd[id[i] >> 4];
		s[2 * i + 1] = hexd[id[i] & 15];
	}
	s[32] = 0;
	add_str(l, s);
}

void vmgenid_main(void)
{
	uint64_t dsdt = find_dsdt();
	if (!dsdt) {
		bad("no DSDT");
		debug_exit(3);
	}
	const uint8_t *p = phys(dsdt);
	uint32_t len = ((const struct sdt *)p)->length;
	/* Method (ADDR, 0) { Return (Package (2) { low, high }) }: name, flags, ReturnOp, PackageOp,
	 * PkgLength (one byte here), NumElements, then the two integers. */
	uint32_t at = find(p, find(p, 0, len, "VGEN", 4), len, "ADDR", 4) + 4;
	if (at + 5 > len || p[at + 1] != 0xa4 || p[at + 2] != 0x12 || p[at + 4] != 2) {
		bad("no VGEN.ADDR method returning a package of two");
		debug_exit(3);
	}
	at += 5;
	uint64_t lo = aml_int(p, &at);
	uint64_t addr = lo | aml_int(p, &at) << 32;
	/* The GED's _CRS holds an Extended Interrupt descriptor: 0x89, length, flags, count, gsi. */
	uint32_t d = find(p, find(p, 0, len, "GED_", 4), len, "\x89", 1);
	if (d + 9 > len) {
		bad("no GED_ interrupt");
		debug_exit(3);
	}
	uint32_t gsi = rd32(p + d + 5);
	const volatile uint8_t *idp = (const volatile uint8_t *)phys(addr);
	uint8_t id[16];
	for (int i = 0; i < 16; i++)
		id[i] = idp[i];
	struct line l = {.len = 0};
	add_str(&l, "vmgenid addr ");
	add_hex(&l, addr);
	add_str(&l, " gsi ");
	add_dec(&l, gsi);
	add_str(&l, " id ");
	add_id(&l, id);
	emit(&l);
	irq_init(gsi, 0); /* no timer: only the GED's interrupt wakes us */
	puts_serial("vmgenid ready\n");
	for (uint32_t seen = 0; seen < 2;) {
		irq_wait();
		if (irq_count == seen)
			continue;
		seen = irq_count;
		for (int i = 0; i < 16; i++)
			id[i] = idp[i];
		add_str(&l, "vmgenid notified ");
		add_dec(&l, seen);
		add_str(&l, " id ");
		add_id(&l, id);
		emit(&l);
	}
	poweroff();
}
