/*
 * Entry of the 64-bit guest by the Linux 64-bit boot protocol: long mode,
 * identity-mapped, RSI = struct boot_params. The linker script puts this at
 * 0x100200, the bzImage 64-bit entry (load address 0x100000 + 0x200), which
 * is also the vmlinux ELF entry.
 */
#include "guest.h"

	.section .text.entry64, "ax"
	.code64
	.globl entry_64
entry_64:
	cli
	cld
	movq %rsi, %r12
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	xorl %eax, %eax
	rep stosb
	movq $(stacks + STACK_SIZE), %rsp
	movq %r12, %rdi
	call linux_main
1:	cli
	hlt
	jmp 1b

/* APs arrive here from the trampoline in long mode. */
	.text
	.globl ap_entry
ap_entry:
	movl $1, %eax
	lock xaddl %eax, ap_next
	cmpl $MAX_CPUS, %eax
	jae 1b
	movl %eax, %ecx
	incl %ecx
	shll $12, %ecx		/* STACK_SIZE == 4096 */
	leaq stacks(%rcx), %rsp
	movl %eax, %edi
	call ap_main
	jmp 1b

	.data
	.balign 4
ap_next:
	.long 1

	/* Stacks need no zeroing: kept out of the BSS the entry clears (the
	 * emulator here runs ~2M instructions/s, so clearing them cost ~100 ms). */
	.section .stacks, "aw", @nobits
	.balign 4096
	.globl stacks
stacks:
	.space STACK_SIZE * (MAX_CPUS + 1)
