# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# Where the CPU torch wheel comes from: this project's machines serve it through their pip configuration; on plain
# PyPI torch 2.13.0 for Linux is the CUDA build, so elsewhere: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: demo test test-slow lint install models zoo e2gc operating-point

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU torch wheel first and pinned, so no dependency can pull the CUDA build; refuse a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda and 'CUDA torch: set TORCH_INDEX (Makefile)')"
	$(BIN)/python -m pip install -q -e '.[torch,runtime,viewer,dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# The main job: simulate the demo drive, run the shipped fusion model over it with the embedded runtime (results
# MCAP, opens in Foxglove), summarise both logs, and draw a contact sheet and the viewer's picture of one frame.
demo: $(STAMP)
	$(BIN)/nearfield simulate --preset demo --out out/demo --overwrite
	$(BIN)/nearfield info out/demo/demo-000.mcap
	$(BIN)/nearfield run --model nf-small --source out/demo/demo-000.mcap --out out/demo/results.mcap
	$(BIN)/nearfield info out/demo/results.mcap
	$(BIN)/nearfield contact-sheet out/demo/demo-000.mcap --frame 30 --out out/demo/contact_sheet.png
	QT_QPA_PLATFORM=offscreen $(BIN)/nearfield view out/demo/demo-000.mcap --model nf-small --frame 30 \
		--screenshot out/demo/view.png

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

# The shipped models, in the stages that made them (simulate data/train, data/train-street, data/train-close and data/val first:
# `nearfield simulate --preset P --out data/P`). Stage 1, the first revision (nf-small-r1, -camera-r1, -uss-r1): the
# train preset alone. Stage 2 (nf-small-r2, -camera-r2, -uss-r2): each fine-tuned from its stage-1 weights on train +
# train-street (kerb-side streets), the fusion model with camera dropout; the last checkpoint is registered (the val
# split holds no street). Stage 2 of fusion took 76 min and of camera 64 min, the two run side by side on the 2
# CPU cores (measured 2026-12-06); the USS run is the lightest of the three. Stage 3 (nf-small-camera-r3
# and nf-small-r3): 3 more epochs at lr 5e-4 on the same presets once the simulator had unlit nights (they changed 3
# of the 30 drives); the USS model was not retrained then, as its input, the echoes, did not change. Stage 4, the
# nf-small-r4 (stage 3's kept as nf-small-r3): 1 more epoch with every camera blanked in half of the samples
# (35 min on one core). Stage 5, the shipped nf-small (stage 4's kept as nf-small-r4): 2 more epochs with the 40
# train-close drives joined (64 min on 2 cores, 2026-12-07), chosen on val, val-close and val-paired. The same last
# stage (STAGE5) for the single-modality models, so that the modality comparison is like for like: the shipped
# nf-small-uss (revision 3; stage 2's kept as nf-small-uss-r2; 12 min) and nf-small-camera (revision 4; stage 3's kept
# as nf-small-camera-r3; 33 min), each without camera dropout or blackout, as in its earlier stages.
STAGE2 := --data data --train-split train train-street --epochs 5 --set train.lr=1e-3 --threads 1 --workers 0
STAGE3 := --data data --train-split train train-street --epochs 3 --set train.lr=5e-4 --threads 1 --workers 0
STAGE2_DATA := nearfield simulate --preset train + train-street (20 + 10 drives x 100 frames, seeds 100000-100019 and \
	110000-110009, scale 0.5); fine-tuned 5 epochs from
STAGE3_DATA := nearfield simulate --preset train + train-street with unlit nights (20 + 10 drives x 100 frames, seeds \
	100000-100019 and 110000-110009, scale 0.5); fine-tuned 3 epochs from
STAGE4_DATA := nearfield simulate --preset train + train-street with unlit nights (20 + 10 drives x 100 frames, seeds \
	100000-100019 and 110000-110009, scale 0.5); fine-tuned 1 epoch from

STAGE5 := --data data --train-split train train-street train-close --epochs 2 --set train.lr=5e-4 --threads 2 --workers 0
STAGE5_DATA := nearfield simulate --preset train + train-street + train-close (20 + 10 + 40 drives x 100 frames, \
	seeds 100000-100019, 110000-110009 and 120000-120039, scale 0.5; train-close drives end 0.08-0.2 m short of an \
	obstacle); fine-tuned 2 epochs from

# These targets rebuild the shipped entries under their names, so each registration says --replace (a name the
# registry has already is refused without it).
models: $(STAMP)
	$(BIN)/nearfield train --config nf-small --data data --out runs/nf-small-r1 --epochs 4
	$(BIN)/nearfield train --config nf-small-camera --data data --out runs/nf-small-camera-r1 --epochs 4
	$(BIN)/nearfield train --config nf-small-uss --data data --out runs/nf-small-uss-r1 --epochs 6
	$(BIN)/nearfield train --config nf-small --init runs/nf-small-r1 --set train.camera_dropout=0.2 $(STAGE2) \
		--out runs/nf-small-r2
	$(BIN)/nearfield train --config nf-small-camera --init runs/nf-small-camera-r1 $(STAGE2) --out runs/nf-small-camera-r2
	$(BIN)/nearfield train --config nf-small-uss --init runs/nf-small-uss-r1 $(STAGE2) --out runs/nf-small-uss-r2
	$(BIN)/nearfield train --config nf-small --init runs/nf-small-r2 --set train.camera_dropout=0.2 $(STAGE3) \
		--out runs/nf-small-r3
	$(BIN)/nearfield train --config nf-small-camera --init runs/nf-small-camera-r2 $(STAGE3) --out runs/nf-small-camera-r3
	$(BIN)/nearfield train --config nf-small --init runs/nf-small-r3 --set train.camera_dropout=0.2 \
		--set train.camera_blackout=0.5 --set train.lr=5e-4 --data data --train-split train train-street --epochs 1 \
		--threads 1 --workers 1 --out runs/nf-small-r4
	$(BIN)/nearfield train --config nf-small --init runs/nf-small-r4 --set train.camera_dropout=0.2 \
		--set train.camera_blackout=0.5 $(STAGE5) --out runs/nf-small-r5
	$(BIN)/nearfield train --config nf-small-uss --init runs/nf-small-uss-r2 $(STAGE5) --out runs/nf-small-uss-r3
	$(BIN)/nearfield train --config nf-small-camera --init runs/nf-small-camera-r3 $(STAGE5) --out runs/nf-small-camera-r4
	$(BIN)/nearfield register-model --replace runs/nf-small-r2 --name nf-small-r2 --file nf-small-r2 --checkpoint last \
		--data "$(STAGE2_DATA) nf-small-r1, lr 1e-3, camera dropout 0.2, batch 4, CPU"
	$(BIN)/nearfield register-model --replace runs/nf-small-camera-r2 --name nf-small-camera-r2 --file nf-small-camera-r2 \
		--checkpoint last --data "$(STAGE2_DATA) nf-small-camera-r1, lr 1e-3, batch 4, CPU"
	$(BIN)/nearfield register-model --replace runs/nf-small-uss-r2 --name nf-small-uss-r2 --file nf-small-uss-r2 \
		--checkpoint last --data "$(STAGE2_DATA) nf-small-uss-r1, lr 1e-3, batch 4, CPU"
	$(BIN)/nearfield register-model --replace runs/nf-small-uss-r3 --name nf-small-uss --file nf-small-uss-r3 \
		--checkpoint last --data "$(STAGE5_DATA) nf-small-uss-r2, lr 5e-4, batch 4, CPU (fusion revision 5's last stage)"
	$(BIN)/nearfield register-model --replace runs/nf-small-r3 --name nf-small-r3 --file nf-small-r3 --checkpoint last \
		--data "$(STAGE3_DATA) nf-small-r2, lr 5e-4, camera dropout 0.2, batch 4, CPU"
	$(BIN)/nearfield register-model --replace runs/nf-small-r4 --name nf-small-r4 --file nf-small-r4 --checkpoint last \
		--data "$(STAGE4_DATA) nf-small-r3, lr 5e-4, camera dropout 0.2, camera blackout 0.5, batch 4, CPU"
	$(BIN)/nearfield register-model --replace runs/nf-small-r5 --name nf-small --file nf-small-r5 --checkpoint last \
		--data "$(STAGE5_DATA) nf-small-r4, lr 5e-4, camera dropout 0.2, camera blackout 0.5, batch 4, CPU"
	$(BIN)/nearfield register-model --replace runs/nf-small-camera-r3 --name nf-small-camera-r3 --file nf-small-camera-r3 \
		--checkpoint last --data "$(STAGE3_DATA) nf-small-camera-r2, lr 5e-4, batch 4, CPU"
	$(BIN)/nearfield register-model --replace runs/nf-small-camera-r4 --name nf-small-camera --file nf-small-camera-r4 \
		--checkpoint last --data "$(STAGE5_DATA) nf-small-camera-r3, lr 5e-4, batch 4, CPU (fusion revision 5's last stage)"
	$(BIN)/nearfield export --replace --model nf-small-r2 --register nf-small-r2 --file nf-small-r2 \
		--parity-data data/val/val-000.mcap
	$(BIN)/nearfield export --replace --model nf-small-camera-r2 --register nf-small-camera-r2 --file nf-small-camera-r2 \
		--parity-data data/val/val-000.mcap
	$(BIN)/nearfield export --replace --model nf-small-uss-r2 --register nf-small-uss-r2 --file nf-small-uss-r2 \
		--parity-data data/val/val-000.mcap
	$(BIN)/nearfield export --replace --model nf-small-uss --register nf-small-uss --file nf-small-uss-r3 \
		--parity-data data/val/val-000.mcap
	$(BIN)/nearfield export --replace --model nf-small-r3 --register nf-small-r3 --file nf-small-r3 \
		--parity-data data/val/val-000.mcap
	$(BIN)/nearfield export --replace --model nf-small-camera-r3 --register nf-small-camera-r3 --file nf-small-camera-r3 \
		--parity-data data/val/val-000.mcap
	$(BIN)/nearfield export --replace --model nf-small-camera --register nf-small-camera --file nf-small-camera-r4 \
		--parity-data data/val/val-000.mcap
	$(BIN)/nearfield export --replace --model nf-small-r4 --register nf-small-r4 --file nf-small-r4 \
		--parity-data data/val/val-000.mcap
	$(BIN)/nearfield export --replace --model nf-small --register nf-small --file nf-small-r5 --parity-data data/val/val-000.mcap

# The compression zoo as shipped: each method run on nf-small-r1 (revision 1 of nf-small; the zoo was made before
# revision 2) and fine-tuned on data/train (simulate it first: `nearfield simulate --preset train --out data/train`,
# likewise train-street, val and test), plus two entries from revision 2:
# nf-small-distill-r2 (distilled on train + train-street) and nf-small-int8-r2 (with its TensorRT artifact), two
# from revision 3, nf-small-pruned50-r3 (3,000 steps: 47 min on one core beside another run) and nf-small-distill-r3
# (3,000 steps with feature imitation: 67 min for it and its trained-alone twin on 2 cores);
# and from revision 4, the shipped nf-small: nf-small-int8-r4, nf-small-pruned50-r4 (the recipes of r2 and r3) and
# nf-small-pruned50-int8-r4, the pruned model quantised (45 min for the pruning on one core);
# registered, then every model measured on data/test one after the other, listed and plotted. About 1.5 h on 2 CPU
# cores. The E2GC pair it measures comes from `make e2gc` (below).
COMPRESS := $(BIN)/nearfield compress --replace --from nf-small-r1 --data data --threads 2 --no-measure
ZOO_MODELS := nf-small nf-small-r4 nf-small-r3 nf-small-camera nf-small-camera-r3 nf-small-uss nf-small-uss-r2 nf-small-r2 nf-small-camera-r2 nf-small-r1 nf-small-camera-r1 nf-small-uss-r1 \
	nf-small-int8 nf-small-pruned50 nf-small-pruned50-int8 \
	nf-small-distill nf-small-distill-ens \
	nf-small-qat-int8 nf-small-lowrank nf-small-magnitude50 nf-small-lamp50 nf-small-random50 nf-small-qat-int4 \
	nf-small-qat-ternary nf-small-resnext nf-small-e2gc nf-small-distill-r2 \
	nf-small-int8-r2 nf-small-pruned50-r3 nf-small-distill-r3 nf-small-int8-r4 nf-small-pruned50-r4 \
	nf-small-pruned50-int8-r4 nf-small-int8-tensorrt nf-small-int8-r2-tensorrt nf-small-int8-r4-tensorrt \
	nf-small-pruned50-int8-r4-tensorrt nf-small-int8-r5 nf-small-int8-r5-tensorrt \
	nf-small-pruned50-r5

zoo: $(STAMP)
	$(COMPRESS) --method int8-ptq --out nf-small-int8 --calib-frames 64
	$(COMPRESS) --method prune-structured --out nf-small-pruned50 --steps 500 --opt flops_ratio=0.5
	$(BIN)/nearfield compress --replace --method int8-ptq --from nf-small-pruned50 --out nf-small-pruned50-int8 --data data \
		--threads 2 --no-measure --calib-frames 64 --opt targets=cpu
	$(COMPRESS) --method distill --out nf-small-distill --steps 600
	$(COMPRESS) --method distill --out nf-small-distill-ens --steps 600 --opt teachers=nf-small-resnext,nf-small-e2gc
	$(COMPRESS) --method qat --out nf-small-qat-int8 --steps 200 --opt weights=int8
	$(COMPRESS) --method lowrank --out nf-small-lowrank --steps 300 --opt rank_ratio=0.5
	$(COMPRESS) --method prune-magnitude --out nf-small-magnitude50 --steps 150 --opt sparsity=0.5
	$(COMPRESS) --method prune-lamp --out nf-small-lamp50 --steps 150 --opt sparsity=0.5
	$(COMPRESS) --method prune-random --out nf-small-random50 --steps 150 --opt sparsity=0.5
	$(COMPRESS) --method qat --out nf-small-qat-int4 --steps 200 --opt weights=int4
	$(COMPRESS) --method qat --out nf-small-qat-ternary --steps 300 --opt weights=ternary
	$(BIN)/nearfield compress --replace --method distill --from nf-small-r2 --out nf-small-distill-r2 --data data --threads 2 \
		--no-measure --steps 600 --opt train_splits=train,train-street --opt lr=0.002
	$(BIN)/nearfield compress --replace --method int8-ptq --from nf-small-r2 --out nf-small-int8-r2 --data data --threads 2 \
		--no-measure --calib-frames 64
	$(BIN)/nearfield compress --replace --method prune-structured --from nf-small-r3 --out nf-small-pruned50-r3 --data data \
		--threads 1 --no-measure --steps 3000 --opt flops_ratio=0.5 --opt lift_channels=24 --opt lr=1e-3 \
		--opt train_splits=train,train-street
	$(BIN)/nearfield compress --replace --method distill --from nf-small-r3 --out nf-small-distill-r3 --data data --threads 2 \
		--no-measure --steps 3000 --opt train_splits=train,train-street --opt lr=0.002 --opt temperature=1 \
		--opt feature_weight=1 --opt seed=0
	$(BIN)/nearfield compress --replace --method int8-ptq --from nf-small-r4 --out nf-small-int8-r4 --data data --threads 1 \
		--no-measure --calib-frames 64
	$(BIN)/nearfield compress --replace --method prune-structured --from nf-small-r4 --out nf-small-pruned50-r4 --data data \
		--threads 1 --no-measure --steps 3000 --opt flops_ratio=0.5 --opt lift_channels=24 --opt lr=1e-3 \
		--opt train_splits=train,train-street
	$(BIN)/nearfield compress --replace --method int8-ptq --from nf-small-pruned50-r4 --out nf-small-pruned50-int8-r4 \
		--data data --threads 1 --no-measure --calib-frames 64
	$(BIN)/nearfield compress --replace --method int8-ptq --from nf-small --out nf-small-int8-r5 --data data --threads 2 \
		--no-measure --calib-frames 64
	$(BIN)/nearfield compress --replace --method prune-structured --from nf-small --out nf-small-pruned50-r5 --data data \
		--threads 2 --no-measure --steps 3000 --opt flops_ratio=0.5 --opt lift_channels=24 --opt lr=1e-3 \
		--opt train_splits=train,train-street,train-close
	for m in $(ZOO_MODELS); do $(BIN)/nearfield zoo measure $$m --data data --threads 2 || exit 1; done
	$(BIN)/nearfield zoo list
	$(BIN)/nearfield zoo plot deploy/docs/zoo.png

# E2GC against a fixed group count: the same fusion network with a ResNeXt-50 32x4d camera encoder at width 0.25
# (32 groups, so 1-8 channels per group) and with its E2GC variant (8 channels per group in every stage), each
# trained like nf-small (4 epochs on data/train; the two runs shared the 2 cores, ~1 h), registered, exported; the
# E2GC entry's parent is the fixed-group-count model, so `make zoo` measures the pair in the same run.
E2GC_DATA := "nearfield simulate --preset train (20 drives x 100 frames, seeds 100000-100019, scale 0.5); 4 epochs, batch 4, CPU"

e2gc: $(STAMP)
	$(BIN)/nearfield train --config nf-small-resnext --data data --out runs/nf-small-resnext --epochs 4
	$(BIN)/nearfield train --config nf-small-e2gc --data data --out runs/nf-small-e2gc --epochs 4
	$(BIN)/nearfield register-model --replace runs/nf-small-resnext --name nf-small-resnext --data $(E2GC_DATA)
	$(BIN)/nearfield register-model --replace runs/nf-small-e2gc --name nf-small-e2gc --data $(E2GC_DATA)
	$(BIN)/nearfield export --replace --model nf-small-resnext --register nf-small-resnext --parity-data data/val/val-000.mcap
	$(BIN)/nearfield compress --replace --method e2gc --from nf-small-e2gc --out nf-small-e2gc --opt baseline=nf-small-resnext \
		--no-measure

# The operating point of the shipped nf-small (perception/docs/near_field.md, "The near-field bias, the memory and the
# operating point"): the smallest near-field bias whose recall within 1 m reaches 95 % in every condition of
# val-paired, with the near-field memory, recorded in its zoo entry
# (`nearfield run --model nf-small --operating-point`). 5.5 min on 2 cores, after the 3-minute simulation.
operating-point: $(STAMP)
	$(BIN)/nearfield simulate --preset val-paired --out data/val-paired --workers 2 --overwrite
	$(BIN)/nearfield operating-point --model nf-small --data data/val-paired --memory --echo-floor --register nf-small
