/*
 * The peer of bench/vmm_exits_bench.ts: a minimal C VMM that boots the same
 * PVH guest ELF as vmkit (32-bit entry from XEN_ELFNOTE_PHYS32_ENTRY, EBX =
 * hvm_start_info with the command line) and runs it with a bare KVM_RUN loop,
 * counting port-I/O exits until the guest writes the debug-exit port 0xf4.
 *
 * usage: kvm_loop GUEST.elf CMDLINE
 * prints: {"exits":N,"ns":T}
 */
#include <elf.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE (64u << 20)
#define START_INFO 0x6000u
#define CMDLINE 0x20000u

static void die(const char *what) {
  perror(what);
  exit(1);
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t load_pvh(uint8_t *mem, const uint8_t *img, size_t len) {
  const Elf64_Ehdr *eh = (const Elf64_Ehdr *)img;
  uint32_t entry = 0;
  if (len < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG)) die("not an ELF");
  int is64 = eh->e_ident[EI_CLASS] == ELFCLASS64;
  for (int i = 0;; i++) {
    uint64_t type, off, paddr, filesz, memsz;
    if (is64) {
      if (i >= eh->e_phnum) break;
      const Elf64_Phdr *ph = (const Elf64_Phdr *)(img + eh->e_phoff + (uint64_t)i * eh->e_phentsize);
      type = ph->p_type, off = ph->p_offset, paddr = ph->p_paddr, filesz = ph->p_filesz, memsz = ph->p_memsz;
    } else {
      const Elf32_Ehdr *e32 = (const Elf32_Ehdr *)img;
      if (i >= e32->e_phnum) break;
      const Elf32_Phdr *ph = (const Elf32_Phdr *)(img + e32->e_phoff + (uint64_t)i * e32->e_phentsize);
      type = ph->p_type, off = ph->p_offset, paddr = ph->p_paddr, filesz = ph->p_filesz, memsz = ph->p_memsz;
    }
    if (off + filesz > len || paddr + memsz > MEM_SIZE) die("segment out of range");
    if (type == PT_LOAD) {
      memcpy(mem + paddr, img + off, filesz);
    } else if (type == PT_NOTE) {
      uint64_t p = off;
      while (p + 12 <= off + filesz) {
        uint32_t namesz = *(const uint32_t *)(img + p), descsz = *(const uint32_t *)(img + p + 4),
                 ntype = *(const uint32_t *)(img + p + 8);
        const uint8_t *name = img + p + 12;
        const uint8_t *desc = name + ((namesz + 3) & ~3u);
        if (ntype == 18 && namesz == 4 && !memcmp(name, "Xen", 4)) entry = *(const uint32_t *)desc;
        p += 12 + ((namesz + 3) & ~3u) + ((descsz + 3) & ~3u);
      }
    }
  }
  if (!entry) die("no PVH entry note");
  return entry;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s GUEST.elf CMDLINE\n", argv[0]);
    return 2;
  }
  int fd = open(argv[1], O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st)) die("open guest");
  uint8_t *img = mmap(NULL, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (img == MAP_FAILED) die("mmap guest");

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) die("/dev/kvm");
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) die("KVM_CREATE_VM");
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000ul) < 0) die("KVM_SET_TSS_ADDR");
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) die("mmap mem");
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");

  uint32_t entry = load_pvh(mem, img, st.st_size);
  strcpy((char *)mem + CMDLINE, argv[2]);
  uint32_t *si = (uint32_t *)(mem + START_INFO);
  si[0] = 0x336ec578; /* magic */
  si[1] = 1;          /* version */
  *(uint64_t *)(mem + START_INFO + 24) = CMDLINE; /* cmdline_paddr */

  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) die("KVM_CREATE_VCPU");
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");

  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
  struct kvm_segment flat = {.base = 0, .limit = 0xffffffff, .present = 1, .dpl = 0, .db = 1, .s = 1, .g = 1};
  flat.type = 11, flat.selector = 0x10;
  sregs.cs = flat;
  flat.type = 3, flat.selector = 0x18;
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flat;
  sregs.cr0 = 0x11; /* PE | ET */
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  struct kvm_regs regs = {.rip = entry, .rbx = START_INFO, .rflags = 2};
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

  uint64_t exits = 0, t0 = now_ns();
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (run->exit_reason == KVM_EXIT_IO) {
      exits++;
      if (run->io.port == 0xf4 && run->io.direction == KVM_EXIT_IO_OUT) break;
      if (run->io.direction == KVM_EXIT_IO_IN) memset((uint8_t *)run + run->io.data_offset, 0xff, run->io.size);
    } else if (run->exit_reason == KVM_EXIT_HLT) {
      break;
    } else if (run->exit_reason != KVM_EXIT_MMIO) {
      fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
      return 1;
    }
  }
  printf("{\"exits\":%llu,\"ns\":%llu}\n", (unsigned long long)exits, (unsigned long long)(now_ns() - t0));
  return 0;
}
