/*
 * kiln-tiny: a guest kernel of a few kilobytes for control-plane tests and scale benchmarks,
 * where a Linux boot (tens of seconds when ring 0 is emulated) would measure the wrong thing.
 *
 * A freestanding x86_64 ELF entered through the Linux 64-bit boot protocol (RSI = zero page).
 * It maps the low 4 GiB, prints the Kiln boot marker on ttyS0, signals the VMM's boot timer,
 * then does what the kernel command line asks:
 *   kiln.action=hold (default)  wait, halted, until Ctrl-Alt-Del arrives on the i8042 keyboard,
 *                               then reboot (as Kiln's init does)
 *   kiln.action=poweroff        write 0 to the debug-exit port 0xf4 (the VMM exits 0)
 *   kiln.action=exit:N          write N to the debug-exit port
 *   kiln.action=reboot          pulse the i8042 reset line
 *   kiln.action=panic           set the BIOS warm-reset flag (0x1234 at 0x472), then reset:
 *                               what Linux does with reboot=k,panic_warm when it panics
 *   kiln.delay=MS               wait MS milliseconds (PIT interrupts, halted) before the action
 * While waiting it is halted with interrupts on: no CPU is used.
 */
#include <stdint.h>

#define COM1 0x3f8
#define DEBUG_EXIT_PORT 0xf4
#define BOOT_TIMER ((volatile uint8_t *)0xd0000000UL)
#define LAPIC ((volatile uint32_t *)0xfee00000UL)
#define PIT_HZ 100

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
	uint8_t v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static void putc_serial(char c) {
	while (!(inb(COM1 + 5) & 0x20))
		;
	outb(COM1, (uint8_t)c);
}
static void say(const char *s) {
	while (*s)
		putc_serial(*s++);
}
static void power_off(uint8_t status);

/* ---- page tables: identity map of the low 4 GiB in 2 MiB pages ---- */

static uint64_t pml4[512] __attribute__((aligned(4096)));
static uint64_t pdpt[512] __attribute__((aligned(4096)));
static uint64_t pd[4][512] __attribute__((aligned(4096)));

static void map_low_4g(void) {
	for (uint64_t i = 0; i < 4; i++) {
		for (uint64_t j = 0; j < 512; j++) {
			uint64_t addr = (i * 512 + j) << 21;
			/* present, writable, 2 MiB page; uncached above 3 GiB (device window) */
			pd[i][j] = addr | 0x83 | (i == 3 ? 0x18 : 0);
		}
		pdpt[i] = (uint64_t)(uintptr_t)pd[i] | 0x3;
	}
	pml4[0] = (uint64_t)(uintptr_t)pdpt | 0x3;
	__asm__ volatile("mov %0, %%cr3" ::"r"(pml4) : "memory");
}

/* ---- interrupts: legacy PIC through LINT0, PIT on IRQ 0, keyboard on IRQ 1 ---- */

struct gate {
	uint16_t off_lo, selector;
	uint8_t ist, type;
	uint16_t off_mid;
	uint32_t off_hi, zero;
} __attribute__((packed));

static struct gate idt[256] __attribute__((aligned(16)));
static volatile uint64_t ticks;
static volatile int delete_pressed;

void on_timer(void) { ticks++; }
void on_keyboard(void) {
	uint8_t code = inb(0x60); /* scan code set 2: 0x71 after 0xe0 is Delete pressed */
	static uint8_t prev;
	if (code == 0x71 && prev == 0xe0)
		delete_pressed = 1;
	prev = code;
}
void on_exception(void) {
	say("kiln-tiny: unexpected exception; exiting with status 99\n");
	power_off(99);
}

/* Each stub saves the registers a C call may clobber, calls its handler, acknowledges the
 * interrupt at the PIC (IRQ stubs only) and returns. */
#define IRQ_STUB(name, handler)                                                         \
	__asm__(".globl " #name "\n" #name ":\n"                                        \
		"push %rax\npush %rcx\npush %rdx\npush %rsi\npush %rdi\n"               \
		"push %r8\npush %r9\npush %r10\npush %r11\n"                            \
		"call " #handler "\n"                                                   \
		"mov $0x20, %al\nout %al, $0x20\n"                                      \
		"pop %r11\npop %r10\npop %r9\npop %r8\n"                                \
		"pop %rdi\npop %rsi\npop %rdx\npop %rcx\npop %rax\n"                    \
		"iretq\n")
IRQ_STUB(isr_timer, on_timer);
IRQ_STUB(isr_keyboard, on_keyboard);
/* Spurious IRQ 7: nothing to acknowledge. */
__asm__(".globl isr_spurious\nisr_spurious:\niretq\n");
__asm__(".globl isr_fatal\nisr_fatal:\ncall on_exception\n");
void isr_timer(void);
void isr_keyboard(void);
void isr_spurious(void);
void isr_fatal(void);

static void set_gate(int vector, void (*handler)(void), uint16_t cs) {
	uint64_t off = (uint64_t)(uintptr_t)handler;
	idt[vector] = (struct gate){(uint16_t)off, cs, 0, 0x8e, (uint16_t)(off >> 16), (uint32_t)(off >> 32), 0};
}

static void setup_interrupts(void) {
	uint16_t cs;
	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (int v = 0; v < 256; v++)
		set_gate(v, isr_fatal, cs);
	set_gate(0x20, isr_timer, cs);
	set_gate(0x21, isr_keyboard, cs);
	set_gate(0x27, isr_spurious, cs);
	struct {
		uint16_t limit;
		uint64_t base;
	} __attribute__((packed)) idtr = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};
	__asm__ volatile("lidt %0" ::"m"(idtr));

	/* Local APIC software-enabled, LINT0 = ExtINT: the PIC's interrupts reach the vCPU. */
	LAPIC[0xf0 / 4] = LAPIC[0xf0 / 4] | 0x1ff;
	LAPIC[0x350 / 4] = 0x700;
	/* PICs: vectors 0x20 and 0x28, cascade on IRQ 2, 8086 mode; only the keyboard (IRQ 1)
	 * unmasked: the timer ticks only while wait_ms needs it. */
	outb(0x20, 0x11), outb(0xa0, 0x11);
	outb(0x21, 0x20), outb(0xa1, 0x28);
	outb(0x21, 0x04), outb(0xa1, 0x02);
	outb(0x21, 0x01), outb(0xa1, 0x01);
	outb(0x21, 0xfd), outb(0xa1, 0xff);
	__asm__ volatile("sti");
}

static void wait_ms(uint64_t ms) {
	uint16_t divisor = 1193182 / PIT_HZ;
	outb(0x43, 0x34); /* channel 0, rate generator */
	outb(0x40, (uint8_t)divisor), outb(0x40, (uint8_t)(divisor >> 8));
	uint64_t until = ticks + (ms * PIT_HZ + 999) / 1000;
	outb(0x21, 0xfc);
	while (ticks < until)
		__asm__ volatile("hlt");
	outb(0x21, 0xfd);
}

/* ---- the command line ---- */

static const char *find(const char *s, const char *key) {
	for (const char *p = s; *p; p++) {
		if (p != s && p[-1] != ' ')
			continue;
		const char *a = p, *b = key;
		while (*b && *a == *b)
			a++, b++;
		if (!*b)
			return a;
	}
	return 0;
}
static int is(const char *value, const char *word) {
	while (*word && *value == *word)
		value++, word++;
	return !*word && (*value == 0 || *value == ' ');
}
static uint64_t number(const char *p) {
	uint64_t n = 0;
	while (p && *p >= '0' && *p <= '9')
		n = n * 10 + (uint64_t)(*p++ - '0');
	return n;
}

static void power_off(uint8_t status) {
	outb(DEBUG_EXIT_PORT, status);
	for (;;)
		__asm__ volatile("cli; hlt");
}

static void reset(void) {
	outb(0x64, 0xfe);
	for (;;)
		__asm__ volatile("cli; hlt");
}

void tiny_main(uint64_t zero_page) {
	const char *cmdline = (const char *)(uintptr_t)*(volatile uint32_t *)(uintptr_t)(zero_page + 0x228);
	map_low_4g();
	say("KILN_GUEST_OK tiny\n");
	*BOOT_TIMER = 123;
	setup_interrupts();

	const char *action = cmdline ? find(cmdline, "kiln.action=") : 0;
	const char *delay = cmdline ? find(cmdline, "kiln.delay=") : 0;
	if (delay)
		wait_ms(number(delay));
	if (action && is(action, "poweroff"))
		power_off(0);
	if (action && action[0] == 'e' && action[1] == 'x' && action[2] == 'i' && action[3] == 't' && action[4] == ':')
		power_off((uint8_t)number(action + 5));
	if (action && is(action, "reboot"))
		reset();
	if (action && is(action, "panic")) {
		volatile uint16_t *warm_reset_flag;
		__asm__("" : "=r"(warm_reset_flag) : "0"((uintptr_t)0x472)); /* not a C object */
		*warm_reset_flag = 0x1234;
		say("kiln-tiny: panic requested\n");
		reset();
	}
	say("KILN_HOLDING\n");
	while (!delete_pressed)
		__asm__ volatile("hlt");
	say("kiln-tiny: Ctrl-Alt-Del: rebooting\n");
	reset();
}

static uint8_t stack[16384] __attribute__((aligned(16), used));

/* Entry: a stack of our own, the zero page pointer (RSI) as the argument. */
__asm__(".section .text.entry\n.globl _start\n_start:\n"
	"cli\n"
	"lea stack+16384(%rip), %rsp\n"
	"mov %rsi, %rdi\n"
	"call tiny_main\n"
	"1: hlt\njmp 1b\n"
	".previous\n");
