#!/bin/bash
# Session 8, call 3: linear-attention variants on fd506c0's kernel (orig): base = state rows padded to 16 words;
# pf = base + q loaded one tile ahead in the backward; A = ReLU kept in bf16; cond = prefetch only with a feature map;
# base_bwdnospec = padding, but the backward does not specialise the state stride. Device time in us.
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
for v in orig base pf pfA pfAcond A base_bwdnospec orig pfAcond base; do
  timeout 90 python3 device_carry/ab/ab.py $PWD/device_carry/ab/$v 2>&1 | grep -v Warn | tee -a $R/ab.log
done
tar -C $OUT -czf $OUT/results.tgz r && rm -rf $R
