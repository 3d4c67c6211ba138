/*
 * The AP startup trampoline: real mode at TRAMP_BASE (CS:IP = 0x7000:0 after
 * SIPI vector 0x70) -> protected mode (-> long mode on x86-64, with the
 * BSP's CR3 patched into tramp_cr3) -> ap_entry. It is data in the image;
 * the BSP copies it below 1 MiB, so every address is taken relative to
 * tramp_start and rebased with T().
 */
#include "guest.h"

#define T(x) (TRAMP_BASE + ((x) - tramp_start))

	.section .rodata.tramp, "a"
	.globl tramp_start, tramp_end, tramp_cr3
	.balign 16
	.code16
tramp_start:
	cli
	cld
	movw %cs, %ax
	movw %ax, %ds
	lgdtl (tramp_gdtr - tramp_start)
	movl %cr0, %eax
	orl $1, %eax
	movl %eax, %cr0
	ljmpl $0x08, $T(tramp_pm)

	.code32
tramp_pm:
	movw $0x10, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %ss
	movw %ax, %fs
	movw %ax, %gs
#ifdef __x86_64__
	movl T(tramp_cr3), %eax
	movl %eax, %cr3
	movl %cr4, %eax
	orl $0x20, %eax			/* PAE */
	movl %eax, %cr4
	movl $0xc0000080, %ecx		/* EFER */
	rdmsr
	orl $0x100, %eax		/* LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000000, %eax		/* PG */
	movl %eax, %cr0
	ljmpl $0x18, $T(tramp_lm)

	.code64
tramp_lm:
	movabsq $ap_entry, %rax
	jmp *%rax
#else
	movl $ap_entry, %eax
	jmp *%eax
#endif

	.balign 8
tramp_gdt:
	.quad 0
	.quad 0x00cf9b000000ffff	/* 0x08: 32-bit code, flat */
	.quad 0x00cf93000000ffff	/* 0x10: data, flat */
	.quad 0x00af9b000000ffff	/* 0x18: 64-bit code */
tramp_gdtr:
	.word tramp_gdtr - tramp_gdt - 1
	.long T(tramp_gdt)
	.balign 4
tramp_cr3:
	.long 0
tramp_end:
