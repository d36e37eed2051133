hist:keys=name:vals=hitcount:sort=hitcount:size=2048 [active]
hist:keys=dfd,common_cpu,flags.hex:vals=hitcount,flags.hex:sort=hitcount.descending:size=2048 [active]
hist:keys=flags.log2:vals=hitcount:sort=hitcount:size=2048 [active]
hist:keys=flags.buckets=1024:vals=hitcount,dfd:sort=hitcount:size=2048 [active]
