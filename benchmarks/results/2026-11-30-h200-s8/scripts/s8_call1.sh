#!/bin/bash
# Session 8, call 1. GPU 0: linear-attention benchmark + sweep on the new code, then the old code (fd506c0, carried in
# device_carry/orig) on the same GPU. GPU 1: the new code's GPU tests, then old and new defaults again.
python3 -m pip install -q --no-index --no-deps --target /tmp/site device_carry/*.whl > /dev/null 2>&1
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
( export CUDA_VISIBLE_DEVICES=0
  PYTHONPATH=/tmp/site:. taskset -c 0-7 timeout 330 python3 benchmarks/linear_attention.py --sweep default bwd_regs168 fwd_unsplit \
     fwd_unsplit_s4 fwd_unsplit_t128w8 --out $R/la_new.json > $R/la_new.log 2>&1
  cd device_carry/orig && PYTHONPATH=/tmp/site:. taskset -c 0-7 timeout 150 python3 benchmarks/linear_attention.py --sweep default \
     --out $R/la_orig.json > $R/la_orig.log 2>&1 ) &
( export CUDA_VISIBLE_DEVICES=1
  PYTHONPATH=/tmp/site:. taskset -c 8-31 timeout 200 python3 -m pytest tests/test_linear_attention_kernel.py -k gpu -q -s \
     -p no:cacheprovider > $R/gpu_tests_la.log 2>&1
  cd device_carry/orig && PYTHONPATH=/tmp/site:. taskset -c 8-31 timeout 120 python3 benchmarks/linear_attention.py --sweep default \
     --out $R/la_orig_gpu1.json > $R/la_orig_gpu1.log 2>&1; cd ../..
  PYTHONPATH=/tmp/site:. taskset -c 8-31 timeout 120 python3 benchmarks/linear_attention.py --sweep default bwd_regs168 \
     --out $R/la_new_gpu1.json > $R/la_new_gpu1.log 2>&1 ) &
wait
for f in la_new la_orig la_orig_gpu1 la_new_gpu1; do echo "== $f"; grep -E "sweep|MISMATCH|Error|error" $R/$f.log | cut -c1-160; done
grep -A7 "CUDA-graph" $R/la_new.log
grep -A7 "CUDA-graph" $R/la_orig.log
grep -E "passed|failed|FAIL|Error" $R/gpu_tests_la.log | tail -8
tar -C $OUT -czf $OUT/results.tgz r && rm -rf $R
