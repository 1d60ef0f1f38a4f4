#!/bin/bash
# Session 8, call 5: the tiny DeiT-shaped families at 224 px on the committed kernels (working tree at the commit named
# in the file names), each GPU with its own softmax DeiT-T for the ratios.
python3 -m pip install -q --no-index --no-deps --target /tmp/site device_carry/*.whl > /dev/null 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:.
R=$OUT/r; mkdir -p $R
bench() { python3 -m vitzoo.bench --models "$@" --img-sizes 224 --scale-batch --no-macs --max-phase-seconds 1 --no-progress; }
( export CUDA_VISIBLE_DEVICES=0
  taskset -c 0-7 timeout 280 bash -c "$(declare -f bench); bench softmax_deit_tiny_patch16_224 linear_deit_tiny_patch16_224 \
     inline_deit_tiny_patch16_224 qt_deit_tiny_patch16_224 zeros_deit_tiny_patch16_224 --results-file $R/zoo_tiny_gpu0.csv" \
     > $R/zoo_gpu0.log 2>&1 ) &
( export CUDA_VISIBLE_DEVICES=1
  taskset -c 8-31 timeout 280 bash -c "$(declare -f bench); bench softmax_deit_tiny_patch16_224 fem_deit_tiny_patch16_224 \
     fem_softmax_deit_tiny_patch16_224 deltanet_deit_tiny_patch16_224 h3_deit_tiny_patch16_224 --results-file $R/zoo_tiny_gpu1.csv" \
     > $R/zoo_gpu1.log 2>&1 ) &
wait
tail -n 8 $R/zoo_gpu0.log $R/zoo_gpu1.log | cut -c1-160
tar -C $OUT -czf $OUT/results.tgz r && rm -rf $R
