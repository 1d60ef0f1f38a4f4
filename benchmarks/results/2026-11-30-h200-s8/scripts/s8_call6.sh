#!/bin/bash
# Session 8, call 6: the other configurations (QT, ZeroS, FEM's doubled values, ReLU) of the committed op (a436c55,
# copy in device_carry/ab/new) against fd506c0 (device_carry/ab/orig), same GPU, interleaved; GPU 1: QT-T, FEM-T and
# softmax DeiT-T at 224 px from both trees, interleaved.
python3 -m pip install -q --no-index --no-deps --target /tmp/site device_carry/*.whl > /dev/null 2>&1
export PYTHONUNBUFFERED=1
R=$OUT/r; mkdir -p $R
( export CUDA_VISIBLE_DEVICES=0
  for v in orig new orig new; do
    taskset -c 0-7 timeout 80 python3 device_carry/ab/ab_configs.py $PWD/device_carry/ab/$v 2>&1 | grep -v Warn >> $R/ab_configs.log
  done ) &
( export CUDA_VISIBLE_DEVICES=1
  for v in new orig new orig; do
    ( cd device_carry/ab/$v && PYTHONPATH=/tmp/site:. taskset -c 8-31 timeout 100 python3 -m vitzoo.bench --models \
        softmax_deit_tiny_patch16_224 qt_deit_tiny_patch16_224 fem_deit_tiny_patch16_224 --img-sizes 224 --scale-batch \
        --no-macs --max-phase-seconds 1 --no-progress --results-file $R/zoo_$v.csv >> $R/zoo_$v.log 2>&1 )
  done ) &
wait
cat $R/ab_configs.log
grep -h "deit_tiny" $R/zoo_new.log $R/zoo_orig.log | cut -c1-120
tar -C $OUT -czf $OUT/results.tgz r && rm -rf $R
