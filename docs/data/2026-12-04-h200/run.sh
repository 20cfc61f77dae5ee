#!/usr/bin/env bash
# The gradient and accuracy stages of config/deit_b.yaml on one CUDA GPU, as the workflow's rules
# call them (`--device cuda`), on a 5,000/2,000-image CIFAR-10 subset and the random-weight DeiT-B
# stand-in; then a finetune stopped by a (faked) SLURM time limit and resumed, against one that ran
# through. Every command's log and `pqv usage` line lands in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
R=/tmp/r; mkdir -p $R /tmp/data /tmp/w /tmp/bin
(cd /tmp/data && tar -xzf $OLDPWD/.gpu/cifar-subset.tar.gz)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee $OUT/machine.txt
python3 -c "import torch, timm, torch_pruning, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, timm.__version__, torch_pruning.__version__, torch.cuda.get_device_name())" | tee -a $OUT/machine.txt
nproc | tee -a $OUT/machine.txt
python3 - <<'EOF'
import timm, torch
from safetensors.torch import save_file
torch.manual_seed(0)
m = timm.create_model("deit_base_patch16_224", pretrained=False)
save_file({k: v.contiguous() for k, v in m.state_dict().items()}, "/tmp/w/model.safetensors")
EOF
step() {  # name, then the pqv command line
    local name=$1; shift
    local t0=$(date +%s%N)
    python3 -m pqv --log-usage "$@" > $R/$name.log 2>&1
    local rc=$?
    local t1=$(date +%s%N)
    LAST_MS=$(( (t1 - t0) / 1000000 ))
    printf "%s\trc=%s\twall_ms=%s\t%s\n" "$name" "$rc" "$(( (t1 - t0) / 1000000 ))" "$(grep '^pqv usage' $R/$name.log | tail -1)" | tee -a $OUT/steps.tsv
    tail -4 $R/$name.log | cut -c1-400
}
HP='{"batch_size": 64, "epochs": 1, "warmup_epochs": 0}'
step data_train data --spec '{"max_train": 4096, "name": "imagefolder", "root": "/tmp/data/cifar10"}' --split train --out $R/data/train.json --threads 16
step data_eval data --spec '{"eval_dir": "test", "max_eval": 2000, "name": "imagefolder", "root": "/tmp/data/cifar10"}' --split eval --train $R/data/train.json --out $R/data/eval.json --threads 16
step model model --model-cfg '{"id": "deit-b", "timm_name": "deit_base_patch16_224", "weights": "/tmp/w/model.safetensors"}' --data $R/data/train.json --out $R/model.safetensors --metrics $R/model_train.csv --threads 1 --workers 8 --device cuda
step prune_taylor prune --model $R/model.safetensors --out $R/taylor/pruned.safetensors --importance taylor --ratio 0.09375 --data $R/data/train.json --calibration-batches 10 --batch-size 64 --round-to 2 --device cuda
step finetune finetune --model $R/taylor/pruned.safetensors --out $R/taylor/finetuned.safetensors --data $R/data/train.json --hparams "$HP" --metrics $R/taylor/finetune_metrics.csv --threads 16 --workers 8 --device cuda
step accuracy_dense evaluate accuracy --artifact $R/model.safetensors --out $R/dense.accuracy.json --data $R/data/eval.json --labels '{"model": "deit-b", "importance": "dense", "ratio": 0.0, "precision": "fp32", "engine": "none", "format": "eager"}' --threads 16 --workers 8 --device cuda
step accuracy_taylor evaluate accuracy --artifact $R/taylor/finetuned.safetensors --out $R/taylor.accuracy.json --data $R/data/eval.json --labels '{"model": "deit-b", "importance": "taylor", "ratio": 0.09375, "precision": "fp32", "engine": "none", "format": "eager"}' --threads 16 --workers 8 --device cuda
# A finetune of 3 epochs stopped by a SLURM time limit (squeue faked: a 200-s job whose deadline
# falls at 60 % of the run-through's wall time), then resumed outside SLURM, against one run through.
HP3='{"batch_size": 64, "epochs": 3, "warmup_epochs": 0, "seed": 0}'
step finetune3_through finetune --model $R/taylor/pruned.safetensors --out $R/through/finetuned.safetensors --data $R/data/train.json --hparams "$HP3" --metrics $R/through/metrics.csv --threads 16 --workers 8 --device cuda
END=$(( $(date +%s) + 10 + LAST_MS * 6 / 10000 ))  # deadline (END less 10 s) at 60 % of the run-through
cat > /tmp/bin/squeue <<EOF
#!/bin/sh
left=\$(( $END - \$(date +%s) )); [ \$left -lt 0 ] && left=0
printf '0:%02d:%02d 3:20\n' \$(( left / 60 )) \$(( left % 60 ))
EOF
chmod +x /tmp/bin/squeue
PATH=/tmp/bin:$PATH SLURM_JOB_ID=4242 step finetune3_stopped finetune --model $R/taylor/pruned.safetensors --out $R/resumed/finetuned.safetensors --data $R/data/train.json --hparams "$HP3" --metrics $R/resumed/metrics.csv --threads 16 --workers 8 --device cuda
ls $R/resumed | tee $OUT/stopped_ls.txt
step finetune3_resumed finetune --model $R/taylor/pruned.safetensors --out $R/resumed/finetuned.safetensors --data $R/data/train.json --hparams "$HP3" --metrics $R/resumed/metrics.csv --threads 16 --workers 8 --device cuda
python3 - <<'EOF' | tee $OUT/compare.txt
import torch
from safetensors.torch import load_file
a, b = load_file("/tmp/r/through/finetuned.safetensors"), load_file("/tmp/r/resumed/finetuned.safetensors")
print("same keys", a.keys() == b.keys())
print("max abs diff", max((a[k].float() - b[k].float()).abs().max().item() for k in a))
print("bit-identical", all(torch.equal(a[k], b[k]) for k in a))
EOF
for f in through resumed; do echo "== $f"; cat $R/$f/metrics.csv; done | tee -a $OUT/compare.txt
cat $R/*.json > $OUT/accuracy.json 2>/dev/null
tar -czf $OUT/logs.tar.gz -C $R $(cd $R && ls *.log) taylor/finetune_metrics.csv
