#!/bin/sh
# Captures the files in tests/data/hist from a Debian 6.1 guest, run as root in the guest:
# `ssh -F <guest ssh_config> <host> sh < capture.sh`. Each file is printed after a "==> NAME <==" line and stored
# as debian-6.1-<arch>.NAME.
set -u
T=/sys/kernel/tracing
cd $T
mkdir instances/cap
I=instances/cap
echo 'p:cap/rd vfs_read fd=$arg1:s32 count=$arg3:u64' >> kprobe_events
echo 'p:cap/op do_sys_openat2 dfd=$arg1:s32 name=+0($arg2):string flags=+0($arg3):u64' >> kprobe_events
echo 'r:cap/opr do_sys_openat2 ret=$retval:s32' >> kprobe_events
for e in rd op opr; do echo "==> cap_$e.format <=="; cat events/cap/$e/format; done
echo 'hist:keys=common_pid.execname:vals=count' >> $I/events/cap/rd/trigger
echo 'hist:keys=__probe_ip.sym' >> $I/events/cap/rd/trigger
echo 'hist:keys=name' >> $I/events/cap/op/trigger
echo 'hist:keys=dfd,common_cpu,flags.hex:vals=hitcount,flags.hex:sort=hitcount.descending' >> $I/events/cap/op/trigger
echo 'hist:keys=flags.log2' >> $I/events/cap/op/trigger
echo 'hist:keys=flags.buckets=1024:vals=dfd' >> $I/events/cap/op/trigger
echo 'hist:keys=ret:vals=hitcount:sort=ret if ret < 0' >> $I/events/cap/opr/trigger
echo 'hist:keys=__probe_ret_ip.sym-offset,ret' >> $I/events/cap/opr/trigger
echo 'hist:keys=stacktrace' >> $I/events/cap/opr/trigger
echo 'hist:keys=child_pid:vals=hitcount:size=128' >> $I/events/sched/sched_process_fork/trigger
echo 'hist:keys=parent_comm' >> $I/events/sched/sched_process_fork/trigger
echo 'hist:keys=id.syscall' >> $I/events/raw_syscalls/sys_enter/trigger
echo 'hist:keys=prev_state if prev_pid == 999999' >> $I/events/sched/sched_switch/trigger
for i in $(seq 200); do cat /nonexistent$i 2>/dev/null; done
for i in 1 2 3; do cat /proc/version >/dev/null; ls / >/dev/null; done
E=$I/events/cap/op/trigger
echo 'hist:keys=nosuch' >> $E 2>/dev/null
echo 'hist:keys=flags.bogus' >> $E 2>/dev/null
echo 'hist:keys=flags:sort=nosuch' >> $E 2>/dev/null
echo 'hist:keys=name' >> $E 2>/dev/null
echo 'hist:keys=' >> $E 2>/dev/null
echo 'hist:keys=dfd.execname' >> $E 2>/dev/null
for f in cap/rd cap/op cap/opr sched/sched_process_fork raw_syscalls/sys_enter sched/sched_switch; do
  echo "==> $(echo $f | tr / _).hist <=="; cat $I/events/$f/hist
done
echo "==> cap_op.trigger <=="; cat $I/events/cap/op/trigger
echo "==> cap_rd.enable <=="; cat $I/events/cap/rd/enable
echo "==> error_log <=="; cat $I/error_log
rmdir $I
for e in rd op opr; do echo "-:cap/$e" >> kprobe_events; done
