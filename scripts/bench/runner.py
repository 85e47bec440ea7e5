"""Loading a system exactly as fairseq-generate builds it, timing it and collecting its
hypotheses.

A system's fairseq-generate arguments are parsed by fairseq's generation parser, the checkpoint
is loaded with ``checkpoint_utils.load_model_ensemble`` into ``task``,
``task.build_generator(models, cfg.generation)`` picks the generator and every sentence goes
through ``task.inference_step``. Clocks: time.perf_counter, with torch.cuda.synchronize()
before each reading under --cuda.
"""

import importlib.util
import logging
import os
import platform
import statistics
import time
from collections import namedtuple

from bench import EXAMPLE_DIR, USER_DIR

logger = logging.getLogger("benchmark")

# what fairseq-generate builds for one system
Built = namedtuple("Built", "cfg task models generator dataset")


def load_evaluate_module():
    """examples/multi30k/evaluate.py (its Decoder undoes the subword model and detokenises)."""
    spec = importlib.util.spec_from_file_location("multi30k_evaluate", EXAMPLE_DIR / "evaluate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def machine_info(a):
    import torch
    import fairseq

    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__, "fairseq": fairseq.__version__,
        "torch_threads": torch.get_num_threads(), "device": "cpu",
    }
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if a.cuda:
        info["device"] = f"cuda: {torch.cuda.get_device_name(0)}"
    return info


def timing_fields(latencies, src_lengths, n_test, batched_seconds, batches):
    """The timing fields of every benchmark row: batch-1 latencies (ms) of ``src_lengths``
    sentences, and ``n_test`` sentences translated in ``batches`` batches in
    ``batched_seconds``."""
    import numpy as np

    total = batched_seconds
    return {
        "test_sentences": n_test,
        "latency_ms_median": round(statistics.median(latencies), 3),
        "latency_ms_mean": round(statistics.fmean(latencies), 3),
        "latency_ms_p90": round(float(np.percentile(latencies, 90)), 3),
        "latency_sentences": len(latencies),
        "latencies_ms": [round(x, 3) for x in latencies],
        "src_lengths": list(src_lengths),
        "throughput_sent_per_s": round(n_test / total, 2) if total > 0 else None,
        "batched_seconds": round(total, 3), "batches": batches,
    }


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def hypothesis_text(hypo, cfg, tgt_dict, strip):
    """A hypothesis as fairseq-generate prints it (H- line text, subwords removed per
    --post-process)."""
    from fairseq import utils

    _, text, _ = utils.post_process_prediction(
        hypo_tokens=hypo["tokens"].int().cpu(), src_str="", alignment=hypo.get("alignment"),
        align_dict=None, tgt_dict=tgt_dict, remove_bpe=cfg.common_eval.post_process,
        extra_symbols_to_ignore=strip)
    return text


class Bench:
    """Loads tasks, datasets and models once, then measures systems one by one."""

    def __init__(self, a, ckpts):
        import torch

        self.torch = torch
        self.a = a
        self.ckpts = ckpts
        self.models = {}    # (ckpt path, task name) -> (models, saved_cfg)
        self.datasets = {}  # task name, or (extra set dir, task name) -> dataset

    def sync(self):
        if self.a.cuda:
            self.torch.cuda.synchronize()

    def generate_args(self, system):
        a = self.a
        args = [a.data_bin, "--path", self.ckpts[system.ckpt], "--user-dir", USER_DIR,
                "--gen-subset", a.gen_subset, "--source-lang", a.source_lang, "--target-lang", a.target_lang,
                "--seed", str(a.seed), "--max-tokens", str(a.max_tokens), "--num-workers", "0"]
        if not a.cuda:
            args.append("--cpu")
        return args + system.args

    def setup(self, system):
        """Built(cfg, task, models, generator, dataset) exactly as fairseq-generate builds them."""
        import ast

        from fairseq import checkpoint_utils, options, tasks, utils
        from fairseq.dataclass.utils import convert_namespace_to_omegaconf

        argv = self.generate_args(system)
        parser = options.get_generation_parser()
        cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=argv))
        task = tasks.setup_task(cfg.task)
        key = (cfg.common_eval.path, cfg.task._name)
        if key not in self.models:
            overrides = ast.literal_eval(cfg.common_eval.model_overrides)
            logger.info("loading %s (task %s)", cfg.common_eval.path, cfg.task._name)
            models, saved_cfg = checkpoint_utils.load_model_ensemble(
                utils.split_paths(cfg.common_eval.path), arg_overrides=overrides, task=task,
                suffix=cfg.checkpoint.checkpoint_suffix,
                strict=(cfg.checkpoint.checkpoint_shard_count == 1),
                num_shards=cfg.checkpoint.checkpoint_shard_count)
            for model in models:
                if self.a.cuda:
                    model.cuda()
                model.prepare_for_inference_(cfg)
                model.eval()
            self.models[key] = (models, saved_cfg)
        models, saved_cfg = self.models[key]
        if cfg.task._name not in self.datasets:
            task.load_dataset(cfg.dataset.gen_subset, task_cfg=saved_cfg.task)
            self.datasets[cfg.task._name] = task.dataset(cfg.dataset.gen_subset)
        dataset = self.datasets[cfg.task._name]
        if getattr(cfg.task, "onnx_dir", None):  # compiled twins: export once per checkpoint
            from nar_refine.export.onnx_passes import export_if_stale

            export_if_stale(models[0], cfg.task.onnx_dir, precision=system.onnx_precision or "float32")
        generator = task.build_generator(models, cfg.generation)
        return Built(cfg, task, models, generator, dataset)

    def saved_cfg(self, built):
        """The training configuration stored in the system's checkpoint."""
        return self.models[(built.cfg.common_eval.path, built.cfg.task._name)][1]

    def run(self, system):
        """Batch-1 latency and batched throughput of one system on the test set.

        -> (timings for results.json, the hypotheses in test order as fairseq-generate prints
        them, the Built system)."""
        import numpy as np
        from fairseq import utils
        from fairseq_cli.generate import get_symbols_to_strip_from_output

        a = self.a
        t_setup = time.perf_counter()
        built = self.setup(system)
        cfg, task, models, generator, dataset = built
        setup_s = time.perf_counter() - t_setup
        tgt_dict = task.target_dictionary
        strip = get_symbols_to_strip_from_output(generator)
        n_test = min(len(dataset), a.test_sentences or len(dataset))

        def sample_of(ids):
            s = dataset.collater([dataset[i] for i in ids])
            return utils.move_to_cuda(s) if a.cuda else s

        def infer(sample):
            return task.inference_step(generator, models, sample)

        # 1. batch-1 latency over the first N sentences (after a warm-up)
        n_lat = min(a.latency_sentences, n_test)
        lat_samples = [sample_of([i]) for i in range(n_lat)]
        for s in lat_samples[: a.warmup] if a.warmup else []:
            infer(s)
        latencies = []
        utils.set_torch_seed(a.seed)
        for s in lat_samples:
            self.sync()
            t0 = time.perf_counter()
            infer(s)
            self.sync()
            latencies.append((time.perf_counter() - t0) * 1000.0)
        special = {tgt_dict.pad(), tgt_dict.eos(), tgt_dict.bos()}
        src_lens = [sum(1 for t in dataset[i]["source"].tolist() if t not in special) for i in range(n_lat)]

        # 2. batched throughput over the test set (also the hypotheses for BLEU)
        indices = dataset.ordered_indices()
        indices = indices[indices < n_test]
        batches = dataset.batch_by_size(indices, max_tokens=a.max_tokens, max_sentences=None)
        samples = [sample_of(list(b)) for b in batches]
        hyps, steps = {}, []
        np.random.seed(a.seed)
        utils.set_torch_seed(a.seed)
        total = 0.0
        for s in samples:
            self.sync()
            t0 = time.perf_counter()
            out = infer(s)
            self.sync()
            total += time.perf_counter() - t0
            for j, sid in enumerate(s["id"].tolist()):
                hypo = out[j][0]
                hyps[sid] = hypothesis_text(hypo, cfg, tgt_dict, strip)
                if hypo.get("steps") is not None:
                    # fairseq's IterativeRefinementGenerator counts from 0: report decoder passes
                    steps.append(int(hypo["steps"]) + (1 if system.family == "CMLM" else 0))
        missing = [i for i in range(n_test) if i not in hyps]
        if missing:
            raise RuntimeError(f"no hypothesis for sample ids {missing[:5]}...")

        timings = {
            **timing_fields(latencies, src_lens, n_test, total, len(samples)),
            "mean_steps": round(statistics.fmean(steps), 2) if steps else None,
            "params": count_params(models[0]),
            "setup_seconds": round(setup_s, 2),
        }
        return timings, [hyps[i] for i in range(n_test)], built
