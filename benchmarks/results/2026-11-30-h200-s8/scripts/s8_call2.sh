#!/bin/bash
# Session 8, call 2: which of the four linear-attention changes of abb0262 made the ReLU config slower (call 1).
# Each variant is the new code with one change reverted; 'orig' is fd506c0. Device time in us.
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
for v in orig all noA noB noC noD orig all; do
  timeout 60 python3 device_carry/ab/ab.py $PWD/device_carry/ab/$v 2>&1 | grep -v Warn | tee -a $R/ab.log
done
tar -C $OUT -czf $OUT/results.tgz r && rm -rf $R
