"""The kit's sizes: the GPU run (one H100/H200, under 8 minutes) and the CPU ``--smoke`` run (tiny; about a minute on 2 shared cores).

Budgets are caps in seconds, process start included; a section that ends early leaves its time to the
grid (the last section), which takes what is left of the kit's total up to its own cap.
"""

from __future__ import annotations

# A one-block model of the tiny preset: what every smoke section trains.
SMOKE_MODEL = ["model.depth=1", "model.projector_depth=1", "model.predictor_depth=1"]

FULL = {
    "total_budget_s": 450.0,  # + start-up and the wheels' install: under 8 minutes
    "cpu_threads": None,  # torch's default
    "budgets": {"step": 100.0, "loss_memory": 30.0, "views": 55.0, "e2e": 80.0, "grid": 240.0},
    "step": {
        "config": "vit_base",
        "overrides": ["data.img_size=224"],
        "batch": 128,
        "steps": 20,
        "warmup": 5,
        "compile_backend": "inductor",
    },
    "loss_memory": {"batches": [128, 256, 512], "tokens": 196, "dim": 768, "repeats": 3},
    "views": {
        "source_hw": (375, 500),  # ImageNet's typical size (the average image is about 400x350)
        "size": 224,
        "images": 256,
        "batch": 128,
        "repeats": 20,
        "config": "vit_base",
        "overrides": [],
        "steps": 40,  # more than the loader's prefetch (workers x 4 batches) can serve from its start-up
        "warmup": 10,
        "loader_workers": 8,
    },
    "e2e": {
        "config": "tiny",
        # 4 loader processes: drawing view parameters + masks per sample is the CPU side of device views
        # (about 660 samples/s per core on the dev box; 256 per step)
        "overrides": ["data.views_on=device", "data.num_workers=4", "train.checkpoint_every=50", "train.log_every=50"],
        "first_steps": 100,  # then a resume from that checkpoint to step 200 (the plan: one epoch, 234 steps)
        "total_steps": 200,
    },
    "grid": {
        "rows": "all",
        "seeds": 3,
        "workers": 11,  # 33 trials = 3 waves of 11 processes sharing the GPU
        "overrides": ["data.views_on=device", "eval.lin.steps=500", "eval.lin.warmup_steps=50"],
        "calib_steps": 30,
        "min_steps": 20,
        "max_steps": 20000,
        "protocols": ["knn", "lin"],
    },
}

SMOKE = {
    "total_budget_s": 170.0,
    # One intra-op thread per process: on a small shared CPU, OpenMP threads waiting for each other made
    # the tiny steps many times slower (2 s a step of batch 8 with 2 threads under load).
    "cpu_threads": 1,
    "budgets": {"step": 60.0, "loss_memory": 30.0, "views": 40.0, "e2e": 60.0, "grid": 80.0},
    "step": {
        "config": "tiny",
        "overrides": SMOKE_MODEL,
        "batch": 8,
        "steps": 1,
        "warmup": 1,
        "compile_backend": "eager",  # dynamo's tracing without inductor's code generation (minutes on a CPU)
    },
    "loss_memory": {"batches": [2, 4], "tokens": 16, "dim": 32, "repeats": 1},
    "views": {
        "source_hw": (48, 64),
        "size": 32,
        "images": 8,
        "batch": 4,
        "repeats": 1,
        "config": "tiny",
        "overrides": ["data.img_size=32", *SMOKE_MODEL],
        "steps": 2,
        "warmup": 1,
        "loader_workers": 1,  # the GPU run's multi-process loader path, at its smallest
    },
    "e2e": {
        "config": "tiny",
        "overrides": [
            "data.views_on=device",
            "data.train_subset=256",
            "train.batch_size=32",
            "train.checkpoint_every=2",
            "train.log_every=2",
            "eval.knn.train_subset=200",
            "eval.knn.test_subset=100",
            *SMOKE_MODEL,
        ],
        "first_steps": 2,
        "total_steps": 4,
    },
    "grid": {
        "rows": "a,e",  # the paper's e - a comparison, paired by seed
        "seeds": 2,
        "workers": 2,
        "overrides": [
            "data.views_on=device",
            "data.train_subset=256",
            "train.batch_size=32",
            "train.log_every=2",
            "eval.train_limit=200",
            "eval.test_limit=100",
            "eval.knn.k=5",
            "eval.lin.steps=5",
            "eval.lin.warmup_steps=1",
            "eval.lin.batch_size=64",
            *SMOKE_MODEL,
        ],
        "calib_steps": 4,
        "min_steps": 2,
        "max_steps": 3,
        "protocols": ["knn", "lin"],
    },
}


def sizes(smoke: bool) -> dict:
    """The settings of one mode (a fresh copy of :data:`SMOKE` or :data:`FULL`)."""
    import copy

    return copy.deepcopy(SMOKE if smoke else FULL)
