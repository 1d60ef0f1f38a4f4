#!/bin/bash
# Session 8, call 4: the committed linear-attention code (ba323dd). GPU 0: the benchmark (committed JSON) with a sweep of
# the register cap, then fd506c0 (device_carry/orig) on the same GPU. GPU 1: GPU tests of both kernel families, then the linear DeiT-T models against softmax DeiT-T at 224 px.
python3 -m pip install -q --no-index --no-deps --target /tmp/site device_carry/*.whl > /dev/null 2>&1
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
( export CUDA_VISIBLE_DEVICES=0
  PYTHONPATH=/tmp/site:. taskset -c 0-7 timeout 300 python3 benchmarks/linear_attention.py --sweep default bwd_regs168 \
     --out $R/linear_attention_h200.json > $R/la_bench.log 2>&1
  cd device_carry/orig && PYTHONPATH=/tmp/site:. taskset -c 0-7 timeout 150 python3 benchmarks/linear_attention.py --sweep default \
     --out $R/la_orig.json > $R/la_orig.log 2>&1 ) &
( export CUDA_VISIBLE_DEVICES=1
  PYTHONPATH=/tmp/site:. taskset -c 8-31 timeout 300 python3 -m pytest tests/test_linear_attention_kernel.py tests/test_delta_rule.py -k gpu -q -s -p no:cacheprovider > $R/gpu_tests.log 2>&1
  PYTHONPATH=/tmp/site:. taskset -c 8-31 timeout 150 python3 -m vitzoo.bench --models softmax_deit_tiny_patch16_224 \
     linear_deit_tiny_patch16_224 inline_deit_tiny_patch16_224 --img-sizes 224 --scale-batch --no-macs --max-phase-seconds 1 \
     --results-file $R/zoo_linear.csv --no-progress > $R/zoo.log 2>&1 ) &
wait
tail -n 8 $R/la_bench.log
grep sweep $R/la_bench.log $R/la_orig.log
grep -E "passed|failed" $R/gpu_tests.log | tail -3; tail -n 3 $R/zoo.log; cut -c1-200 $R/zoo_linear.csv
tar -C $OUT -czf $OUT/results.tgz r && rm -rf $R
