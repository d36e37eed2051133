/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The trace event of the ktbar example driver: events/ktbar/ktbar_request in
 * tracefs, present as soon as the module is loaded and gone when it is removed.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM ktbar

#if !defined(_KTBAR_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _KTBAR_TRACE_H

#include <linux/tracepoint.h>
#include <linux/version.h>

/*
 * Emitted after each request of ktbar's IRQ, with what request_*irq() returned,
 * so a test can compare the driver's own view with a kretprobe on __setup_irq.
 */
TRACE_EVENT(ktbar_request,

	TP_PROTO(int irq, const char *name, int ret),

	TP_ARGS(irq, name, ret),

	TP_STRUCT__entry(
		__field(int, irq)
		__field(int, ret)
		__string(name, name)
	),

	TP_fast_assign(
		__entry->irq = irq;
		__entry->ret = ret;
/* Since 6.10 the source comes from __string(); 6.1 wants it here. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 10, 0)
		__assign_str(name);
#else
		__assign_str(name, name);
#endif
	),

	TP_printk("irq=%d name=%s ret=%d", __entry->irq, __get_str(name), __entry->ret)
);

#endif /* _KTBAR_TRACE_H */

/* The header lives beside the module, not under include/trace/events/. */
#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE ktbar_trace
#include <trace/define_trace.h>
