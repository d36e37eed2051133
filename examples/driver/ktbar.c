// SPDX-License-Identifier: GPL-2.0
/*
 * ktbar: the example out-of-tree driver of pytest-ktrace.
 *
 * It needs no hardware. module_init allocates an interrupt descriptor of its
 * own, backed by the kernel's dummy irq_chip, and requests it under the
 * irqaction name given by the "name" parameter. So during insmod a kprobe on
 * __setup_irq sees that name and a kretprobe sees 0, and the module's own trace
 * event (ktbar/ktbar_request) reports the same request. The IRQ never fires.
 *
 * Other parameters make the module fail in known ways, so that a test can check
 * what the kernel reports: fail_init=1 (init returns -ENODEV), warn=1 (a WARN()
 * during init; the module still loads) and bad_irq_flags=1 (__setup_irq refuses
 * the request with -EINVAL, and init fails with that error).
 */

#include <linux/interrupt.h>
#include <linux/irq.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/numa.h>

#define CREATE_TRACE_POINTS
#include "ktbar_trace.h"

static char *ktbar_name = "ktbar";
module_param_named(name, ktbar_name, charp, 0444);
MODULE_PARM_DESC(name,
		 "irqaction name of the IRQ, as __setup_irq and /proc/interrupts show it (default \"ktbar\")");

static bool ktbar_fail_init;
module_param_named(fail_init, ktbar_fail_init, bool, 0444);
MODULE_PARM_DESC(fail_init, "make module_init fail with -ENODEV before it requests any IRQ");

static bool ktbar_warn;
module_param_named(warn, ktbar_warn, bool, 0444);
MODULE_PARM_DESC(warn, "WARN() during module_init; the module still loads");

static bool ktbar_bad_irq_flags;
module_param_named(bad_irq_flags, ktbar_bad_irq_flags, bool, 0444);
MODULE_PARM_DESC(bad_irq_flags,
		 "request the IRQ threaded with no primary handler and no IRQF_ONESHOT, which __setup_irq rejects with -EINVAL");

/*
 * Serialises module_init, module_exit and writes to the rerequest parameter,
 * which sysfs accepts at any time, even while init or exit runs.
 */
static DEFINE_MUTEX(ktbar_lock);
/* The descriptor allocated by module_init; 0 while there is none. */
static unsigned int ktbar_irq;
static bool ktbar_irq_requested;

static irqreturn_t ktbar_handler(int irq, void *dev_id)
{
	return IRQ_HANDLED;
}

static irqreturn_t ktbar_thread_fn(int irq, void *dev_id)
{
	return IRQ_HANDLED;
}

/*
 * Out of line and never cloned, so that the symbol "ktbar_request" exists under
 * that exact name for a kprobe, with the IRQ in $arg1 and the irqaction name in
 * $arg2. It runs during module_init, so a probe meant to see that call is
 * registered before insmod as "ktbar:ktbar_request".
 */
static noinline __noclone int ktbar_request(unsigned int irq, const char *irq_name)
{
	int ret;

	if (ktbar_bad_irq_flags)
		/*
		 * Without a primary handler the line stays unmasked while the
		 * thread runs, which storms on a level-triggered interrupt; so
		 * __setup_irq insists on IRQF_ONESHOT here and returns -EINVAL.
		 */
		ret = request_threaded_irq(irq, NULL, ktbar_thread_fn, 0, irq_name, &ktbar_irq);
	else
		ret = request_irq(irq, ktbar_handler, 0, irq_name, &ktbar_irq);

	trace_ktbar_request(irq, irq_name, ret);
	return ret;
}

/*
 * Writing anything to /sys/module/ktbar/parameters/rerequest frees the IRQ and
 * requests it again. On 6.1 a module's own trace event can only be enabled once
 * the module is loaded, by which time module_init has requested the IRQ
 * already: this lets a test enable events/ktbar/ktbar_request (or probes) and
 * then trigger.
 */
static int ktbar_rerequest_set(const char *val, const struct kernel_param *kp)
{
	int ret;

	mutex_lock(&ktbar_lock);
	if (!ktbar_irq) {
		/* As an insmod argument, or before init requested the IRQ. */
		ret = -EINVAL;
		goto out;
	}
	if (ktbar_irq_requested) {
		free_irq(ktbar_irq, &ktbar_irq);
		ktbar_irq_requested = false;
	}
	ret = ktbar_request(ktbar_irq, ktbar_name);
	ktbar_irq_requested = !ret;
	pr_info("ktbar: irq %u requested again as \"%s\": %d\n", ktbar_irq, ktbar_name, ret);
out:
	mutex_unlock(&ktbar_lock);
	return ret;
}

static const struct kernel_param_ops ktbar_rerequest_ops = {
	.set = ktbar_rerequest_set,
};
module_param_cb(rerequest, &ktbar_rerequest_ops, NULL, 0200);
MODULE_PARM_DESC(rerequest, "write anything (after loading) to free the IRQ and request it again");

/*
 * Writing 1 to /sys/module/ktbar/parameters/hold takes a reference on the
 * module, as an open device file of a driver does, so "rmmod ktbar" fails with
 * "Resource temporarily unavailable" (refcnt 1) until 0 is written. A test uses
 * it to see how a module that cannot be unloaded is reported.
 */
static bool ktbar_held;

static int ktbar_hold_set(const char *val, const struct kernel_param *kp)
{
	bool hold;
	int ret = kstrtobool(val, &hold);

	if (ret)
		return ret;
	mutex_lock(&ktbar_lock);
	if (!ktbar_irq) {
		/* As an insmod argument: the module is not live yet. */
		ret = -EINVAL;
	} else if (hold && !ktbar_held) {
		__module_get(THIS_MODULE);
		ktbar_held = true;
	} else if (!hold && ktbar_held) {
		module_put(THIS_MODULE);
		ktbar_held = false;
	}
	mutex_unlock(&ktbar_lock);
	return ret;
}

static const struct kernel_param_ops ktbar_hold_ops = {
	.set = ktbar_hold_set,
	.get = param_get_bool,
};
module_param_cb(hold, &ktbar_hold_ops, &ktbar_held, 0644);
MODULE_PARM_DESC(hold, "write 1 (after loading) to hold a reference on the module, so rmmod fails; 0 to let go");

static int __init ktbar_init(void)
{
	int irq, ret;

	pr_info("ktbar: loading (name=\"%s\" fail_init=%d warn=%d bad_irq_flags=%d)\n",
		ktbar_name, ktbar_fail_init, ktbar_warn, ktbar_bad_irq_flags);

	WARN(ktbar_warn, "ktbar: warning on purpose (warn=1)\n");

	if (ktbar_fail_init) {
		pr_info("ktbar: failing init on purpose (fail_init=1)\n");
		return -ENODEV;
	}

	/*
	 * Not irq_alloc_desc(): it records THIS_MODULE as the descriptor's
	 * owner, request_irq() then takes a reference on the owner, and the
	 * module pins itself (rmmod: "Resource temporarily unavailable"). With
	 * no owner nothing holds the module. Allocation starts at 1 because
	 * much of the kernel reads IRQ 0 as "none".
	 */
	irq = __irq_alloc_descs(-1, 1, 1, NUMA_NO_NODE, NULL, NULL);
	if (irq < 0) {
		pr_err("ktbar: cannot allocate an IRQ descriptor: %d\n", irq);
		return irq;
	}
	/*
	 * __setup_irq refuses a descriptor without a chip (-ENOSYS); the dummy
	 * chip needs no interrupt controller behind it.
	 */
	irq_set_chip_and_handler(irq, &dummy_irq_chip, handle_simple_irq);

	mutex_lock(&ktbar_lock);
	ret = ktbar_request(irq, ktbar_name);
	if (ret) {
		mutex_unlock(&ktbar_lock);
		pr_err("ktbar: requesting irq %d as \"%s\" failed: %d\n", irq, ktbar_name, ret);
		irq_free_descs(irq, 1);
		return ret;
	}
	ktbar_irq = irq;
	ktbar_irq_requested = true;
	mutex_unlock(&ktbar_lock);

	pr_info("ktbar: irq %d requested as \"%s\"\n", irq, ktbar_name);
	return 0;
}

static void __exit ktbar_exit(void)
{
	mutex_lock(&ktbar_lock);
	if (ktbar_irq_requested)
		free_irq(ktbar_irq, &ktbar_irq);
	irq_free_descs(ktbar_irq, 1);
	pr_info("ktbar: irq %u freed, unloading\n", ktbar_irq);
	ktbar_irq = 0;
	ktbar_irq_requested = false;
	mutex_unlock(&ktbar_lock);
}

module_init(ktbar_init);
module_exit(ktbar_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("pytest-ktrace");
MODULE_DESCRIPTION("pytest-ktrace example: requests a hardware-less IRQ, fails on demand");
