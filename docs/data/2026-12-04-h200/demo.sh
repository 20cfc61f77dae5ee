#!/usr/bin/env bash
# The demo's CUDA paths: a base model trained from scratch, Taylor and Hessian pruning, a finetune
# with and without distillation, the eager accuracy passes; all `--device cuda`, as the rules call them.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
R=/tmp/d; mkdir -p $R
step() {
    local name=$1; shift
    local t0=$(date +%s%N)
    python3 -m pqv --log-usage "$@" > $R/$name.log 2>&1
    local rc=$?
    printf "%s\trc=%s\twall_ms=%s\t%s\n" "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))" "$(grep '^pqv usage' $R/$name.log | tail -1)" | tee -a $OUT/steps.tsv
    [ $rc = 0 ] || tail -6 $R/$name.log
}
M='{"id": "demo_vit", "kwargs": {"depth": 6, "embed_dim": 96, "img_size": 16, "in_chans": 1, "num_heads": 3, "patch_size": 4}, "timm_name": "vit_tiny_patch16_224", "train": {"batch_size": 32, "epochs": 25, "lr": 0.002, "smoothing": 0.0}, "weights": "train"}'
step data_train data --spec '{"name": "digits"}' --split train --out $R/data/train.json --threads 2
step data_eval data --spec '{"name": "digits"}' --split eval --train $R/data/train.json --out $R/data/eval.json --threads 2
step model model --model-cfg "$M" --data $R/data/train.json --out $R/model.safetensors --metrics $R/model_train.csv --threads 2 --workers 0 --device cuda
for imp in taylor hessian; do
    step prune_$imp prune --model $R/model.safetensors --out $R/$imp/pruned.safetensors --importance $imp --ratio 0.25 --data $R/data/train.json --calibration-batches 4 --batch-size 32 --device cuda
done
step finetune finetune --model $R/taylor/pruned.safetensors --out $R/taylor/finetuned.safetensors --data $R/data/train.json --hparams '{"batch_size": 32, "lr": 0.0005}' --metrics $R/taylor/metrics.csv --threads 2 --workers 0 --device cuda
step finetune_distill finetune --model $R/hessian/pruned.safetensors --out $R/hessian/finetuned.safetensors --data $R/data/train.json --hparams '{"batch_size": 32, "lr": 0.0005, "distill": {"enabled": true}}' --teacher $R/model.safetensors --metrics $R/hessian/metrics.csv --threads 2 --workers 0 --device cuda
for b in taylor hessian; do
    step accuracy_$b evaluate accuracy --artifact $R/$b/finetuned.safetensors --out $R/$b.accuracy.json --data $R/data/eval.json --labels "{\"model\": \"demo_vit\", \"importance\": \"$b\", \"ratio\": 0.25, \"precision\": \"fp32\", \"engine\": \"none\", \"format\": \"eager\"}" --threads 2 --workers 0 --device cuda
done
python3 -c "
import json
for b in ('taylor', 'hessian'):
    r = json.load(open(f'/tmp/d/{b}.accuracy.json')); print(b, r['status'], r['top1'], r['accuracy_device'], r['device'])
" | tee $OUT/accuracy.txt
for f in $R/model_train.csv $R/taylor/metrics.csv $R/hessian/metrics.csv; do echo "== $f"; tail -n 3 $f; done | tee $OUT/metrics.txt
