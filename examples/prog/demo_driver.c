/*
 * demo_driver: a user-space stand-in for a driver's probe path, so the examples run on any machine with uprobes.
 *
 *   demo_driver IFNAME IRQ     register_irq(IRQ, IFNAME, &cfg) -> 0, or -EINVAL (-22) when IRQ is not 1..1019
 *
 * register_irq() mirrors the shape of the kernel's __setup_irq(irq, desc, new): an int, then pointers whose
 * members a probe reads by offset (cfg->name is at offset 8, cfg->flags at offset 16 on 64-bit).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

struct irq_cfg {
	int irq;
	const char *name;
	unsigned long flags;
};

__attribute__((noinline, used)) int register_irq(int irq, const char *name, struct irq_cfg *cfg)
{
	if (irq < 1 || irq > 1019)
		return -EINVAL;
	cfg->irq = irq;
	cfg->name = name;
	return 0;
}

int main(int argc, char **argv)
{
	struct irq_cfg cfg = { 0, argc > 1 ? argv[1] : "eth0", 0x80 };
	int ret;

	if (argc != 3) {
		fprintf(stderr, "usage: demo_driver IFNAME IRQ\n");
		return 2;
	}
	ret = register_irq(atoi(argv[2]), argv[1], &cfg);
	printf("register_irq(%s, %s) = %d\n", argv[2], argv[1], ret);
	return ret ? 1 : 0;
}
