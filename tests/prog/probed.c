/*
 * probed: a tiny program for the uprobe tests of pytest-ktrace.
 *
 * Every probed function is noinline + used so it exists as a symbol (also at -O0 -g, PIE or -no-pie) and the
 * call really happens. argv selects the scenario; each prints its result on stdout, one line, so a test can check
 * what the trace says against what the program saw. See README.md for the exact arguments and offsets.
 *
 *   probed setup NAME IRQ          setup_thing(IRQ, NAME, &t); prints "setup_thing=<ret>"  (ret -22 if IRQ > 1000)
 *   probed add A B                 add_u64(A, B) with A, B parsed as unsigned long (strtoul, base 0)
 *   probed fib N                   fib(N), recursive: fib(0)=0, fib(1)=1
 *   probed sleep US                sleep_us(US): nanosleep for US microseconds (latency tests)
 *   probed struct NAME IRQ COUNT   takes_struct(&t) with t = {IRQ, COUNT, NAME, 'k'}; returns irq + count
 *   probed fault                   takes_string((const char *)1): a pointer that faults when fetched
 *   probed loop N                  calls add_u64(i, 1) N times (volume)
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROBED __attribute__((noinline, used))

/* x86_64 / aarch64 (LP64) layout, asserted below:
 *   offset 0  int irq
 *   offset 8  long count
 *   offset 16 const char *name
 *   offset 24 char tag
 *   sizeof 32
 */
struct thing {
	int irq;
	long count;
	const char *name;
	char tag;
};

_Static_assert(__builtin_offsetof(struct thing, irq) == 0, "irq offset");
_Static_assert(__builtin_offsetof(struct thing, count) == 8, "count offset");
_Static_assert(__builtin_offsetof(struct thing, name) == 16, "name offset");
_Static_assert(__builtin_offsetof(struct thing, tag) == 24, "tag offset");

/* volatile sink so -O2 builds cannot drop the calls either */
volatile long probed_sink;

PROBED int setup_thing(int irq, const char *name, struct thing *t)
{
	if (irq > 1000)
		return -EINVAL; /* -22 */
	t->irq = irq;
	t->count = 0;
	t->name = name;
	t->tag = 's';
	return 0;
}

PROBED long add_u64(unsigned long a, unsigned long b)
{
	return (long)(a + b);
}

PROBED int fib(int n)
{
	if (n < 2)
		return n;
	return fib(n - 1) + fib(n - 2);
}

PROBED void sleep_us(int us)
{
	struct timespec ts = { us / 1000000, (long)(us % 1000000) * 1000L };

	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

PROBED int takes_struct(struct thing *t)
{
	probed_sink = t->tag;
	return (int)(t->irq + t->count);
}

PROBED int takes_string(const char *s)
{
	/* never dereferences s: only the uprobe fetches it (and faults) */
	probed_sink = (long)(s != NULL);
	return 7;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: probed setup NAME IRQ | add A B | fib N | sleep US | struct NAME IRQ COUNT | fault | loop N\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct thing t;

	if (argc < 2)
		return usage();
	if (!strcmp(argv[1], "setup") && argc == 4) {
		memset(&t, 0, sizeof(t));
		printf("setup_thing=%d\n", setup_thing(atoi(argv[3]), argv[2], &t));
	} else if (!strcmp(argv[1], "add") && argc == 4) {
		printf("add_u64=%ld\n", add_u64(strtoul(argv[2], NULL, 0), strtoul(argv[3], NULL, 0)));
	} else if (!strcmp(argv[1], "fib") && argc == 3) {
		printf("fib=%d\n", fib(atoi(argv[2])));
	} else if (!strcmp(argv[1], "sleep") && argc == 3) {
		sleep_us(atoi(argv[2]));
		printf("sleep_us=%d\n", atoi(argv[2]));
	} else if (!strcmp(argv[1], "struct") && argc == 5) {
		t.irq = atoi(argv[3]);
		t.count = strtol(argv[4], NULL, 0);
		t.name = argv[2];
		t.tag = 'k';
		printf("takes_struct=%d\n", takes_struct(&t));
	} else if (!strcmp(argv[1], "fault") && argc == 2) {
		printf("takes_string=%d\n", takes_string((const char *)1));
	} else if (!strcmp(argv[1], "loop") && argc == 3) {
		long i, n = atol(argv[2]);

		for (i = 0; i < n; i++)
			add_u64((unsigned long)i, 1);
		printf("loop=%ld\n", n);
	} else {
		return usage();
	}
	return 0;
}
