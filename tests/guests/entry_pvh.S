/*
 * PVH entry of the 32-bit guest: protected mode, paging off, flat segments,
 * EBX = struct hvm_start_info. The Xen note tells the loader where this is.
 */
#include "guest.h"

	.section .note.Xen, "a", @note
	.balign 4
	.long 4			/* namesz: "Xen\0" */
	.long 4			/* descsz */
	.long 18		/* XEN_ELFNOTE_PHYS32_ENTRY */
	.asciz "Xen"
	.balign 4
	.long pvh_entry
	.balign 4

	.section .text.entry, "ax"
	.code32
	.globl pvh_entry
pvh_entry:
	cli
	cld
	movl %ebx, %esi
	movl $__bss_start, %edi
	movl $__bss_end, %ecx
	subl %edi, %ecx
	xorl %eax, %eax
	rep stosb
	movl $(stacks + STACK_SIZE), %esp
	pushl %esi
	call pvh_main
1:	cli
	hlt
	jmp 1b

/* APs arrive here from the trampoline in protected mode. */
	.globl ap_entry
ap_entry:
	movl $1, %eax
	lock xaddl %eax, ap_next
	cmpl $MAX_CPUS, %eax
	jae 1b
	movl %eax, %ecx
	incl %ecx
	shll $12, %ecx		/* STACK_SIZE == 4096 */
	leal stacks(%ecx), %esp
	pushl %eax
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
