#!/bin/bash
# Session 8, call 7: state padding for one weighting only (the working tree's commit; copy in device_carry/ab/new)
# against fd506c0 for the QT, ZeroS, FEM and ReLU configurations (GPU 0, interleaved), and the GPU tests (GPU 1).
python3 -m pip install -q --no-index --no-deps --target /tmp/site device_carry/*.whl > /dev/null 2>&1
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
( export CUDA_VISIBLE_DEVICES=0
  for v in orig new orig new; do
    taskset -c 0-7 timeout 80 python3 device_carry/ab/ab_configs.py $PWD/device_carry/ab/$v 2>&1 | grep -v Warn >> $R/ab_configs.log
  done ) &
( export CUDA_VISIBLE_DEVICES=1
  PYTHONPATH=/tmp/site:. taskset -c 8-31 timeout 300 python3 -m pytest tests/test_linear_attention_kernel.py tests/test_delta_rule.py \
     -k gpu -q -s -p no:cacheprovider > $R/gpu_tests.log 2>&1 ) &
wait
cat $R/ab_configs.log
grep -E "passed|failed" $R/gpu_tests.log | tail -3
tar -C $OUT -czf $OUT/results.tgz r && rm -rf $R
