"""FID of real MNIST test digits against the MNIST training set, with the time it takes on this CPU.

    python benchmarks/fid_mnist.py                       # 2,000 test digits against 2,000 random training digits
    python benchmarks/fid_mnist.py --test 2000 --train 60000 --baseline   # hours on a CPU
    python benchmarks/fid_mnist.py --quick               # 8 against 8, seconds (a smoke run; not written to results/)

Both sets go through the Inception-v3 features of `edm-space eval --metrics fid` (edm_space.fid) and the
Frechet distance with the bootstrap error bar of edm_space.evaluation (over the test digits). With
--baseline, a second Frechet distance between two disjoint training subsets of the same size shows the
floor that finite sets give. The distance of the test set to itself checks the formula (0 to rounding). The features
are kept in the work folder, so a rerun only extracts what is missing. Images/second of the feature
extractor are timed on 32 digits with 1 and with 2 threads before the main run.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Dict, List, Tuple

import common  # noqa: E402  (puts the repository root on sys.path)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from edm_space.data import load  # noqa: E402
from edm_space.evaluation import frechet  # noqa: E402
from edm_space.fid import InceptionFeatures  # noqa: E402
from edm_space.files import save_npz_atomic  # noqa: E402
from edm_space.metrics import frechet_distance  # noqa: E402


CHUNK = 250  # images whose features are stored together, so that an interrupted or larger run reuses them


def chunk_features(images: torch.Tensor, index: torch.Tensor, path: str, extractor: InceptionFeatures) -> torch.Tensor:
    """Inception features of images[index], stored in `path` and read back from it on a rerun."""
    if os.path.exists(path):
        with np.load(path) as stored:
            if stored["features"].shape[0] == len(index):
                return torch.from_numpy(stored["features"])
    out = extractor(images[index])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_npz_atomic(path, {"features": out.numpy()})
    return out


def interleaved_features(sets: Dict[str, Tuple[torch.Tensor, torch.Tensor, int]], work_dir: str, extractor: InceptionFeatures) -> Dict[str, torch.Tensor]:
    """Features of images[order[:n]] for each named (images, order, n), CHUNK images of each set in turn,
    so that a run stopped early has equal shares of every set to rerun a smaller comparison from."""
    parts: Dict[str, List[torch.Tensor]] = {name: [] for name in sets}
    for chunk, start in enumerate(range(0, max(n for _, _, n in sets.values()), CHUNK)):
        for name, (images, order, n) in sets.items():
            if start < n:
                parts[name].append(chunk_features(images, order[start : min(start + CHUNK, n)], os.path.join(work_dir, f"{name}-{chunk}.npz"), extractor))
    return {name: torch.cat(p) for name, p in parts.items()}


def images_per_second(threads: int, images: torch.Tensor, extractor: InceptionFeatures) -> float:
    """Feature extraction speed on `images` with `threads` torch threads (after one warm-up batch)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        extractor(images[: extractor.batch])
        start = time.perf_counter()
        extractor(images)
        return len(images) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


def run(test_n: int, train_n: int, threads: int, work_dir: str, speed_n: int, baseline: bool) -> dict:
    """Time the extractor, extract the features of the sets, and the distances between them."""
    extractor = InceptionFeatures(batch=32)
    test = load("mnist-test")
    test_order = torch.from_numpy(np.random.default_rng(0).permutation(len(test)))
    speed = {f"{t}_thread{'s' if t > 1 else ''}": images_per_second(t, test[test_order[:speed_n]], extractor) for t in (1, 2)}
    torch.set_num_threads(threads)
    start = time.perf_counter()
    train = load("mnist")
    order = torch.from_numpy(np.random.default_rng(1).permutation(len(train)))
    sets = {"test": (test, test_order, test_n), "train": (train, order, train_n)}
    if baseline:  # the next train_n digits of the same permutation, disjoint from the first
        sets[f"train-after-{train_n}"] = (train, order[train_n:], train_n)
    features = interleaved_features(sets, work_dir, extractor)
    test_features, train_features = features["test"], features["train"]
    second_features = features.get(f"train-after-{train_n}")
    seconds = time.perf_counter() - start
    return {
        "test_digits": test_n, "training_digits": train_n, "threads": threads, "images_per_second": speed, "speed_digits": speed_n,
        "extraction_seconds": seconds, "images_extracted": test_n + train_n * (2 if baseline else 1),
        "fid_test_vs_train": frechet(train_features, test_features, resamples=10, seed=0),
        "fid_train_vs_train": None if second_features is None else frechet_distance(train_features, second_features),
        "fid_test_vs_itself": frechet_distance(test_features, test_features),
    }


def markdown(result: dict, info: dict) -> str:
    """The report."""
    fid = result["fid_test_vs_train"]
    rows = [["test digits against training digits", f"{fid['value']:.3f} ± {fid['sd']:.3f}"],
            ["two disjoint training subsets of the same size", "-" if result["fid_train_vs_train"] is None else f"{result['fid_train_vs_train']:.3f}"],
            ["test digits against themselves", f"{result['fid_test_vs_itself']:.2e}"]]
    speed = result["images_per_second"]
    return "\n\n".join([
        "# FID of real MNIST digits (Inception-v3, TF-graph port)",
        f"Command: `python benchmarks/fid_mnist.py --test {result['test_digits']} --train {result['training_digits']} --threads {result['threads']}"
        + (" --baseline`" if result["fid_train_vs_train"] is not None else "`"),
        f"{result['test_digits']:,} test digits (the first of a seeded permutation of the 10,000) against {result['training_digits']:,} training digits "
        "(the first of a seeded permutation of the 60,000); ± is the bootstrap sd over the test digits.",
        common.markdown_table(["sets", "FID"], rows),
        f"Feature extraction: {speed['1_thread']:.2f} images/s on one thread, {speed['2_threads']:.2f} on two "
        f"({result['speed_digits']} digits each); the {result['images_extracted']:,} images of the run took {result['extraction_seconds']:.0f} s "
        f"on {result['threads']} threads.",
        "## Machine", common.machine_markdown(info),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", type=int, default=2000, help="test digits (of 10,000)")
    parser.add_argument("--train", type=int, default=2000, help="training digits (of 60,000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", default="runs/bench_fid_mnist", help="extracted features, reused by a rerun")
    parser.add_argument("--baseline", action="store_true", help="also FID between two disjoint training subsets of --train digits")
    parser.add_argument("--quick", action="store_true", help="8 against 8 digits, not written to results/")
    args = parser.parse_args()
    with common.one_line_errors():
        if args.quick:
            result = run(8, 8, args.threads, args.work_dir + "_quick", speed_n=8, baseline=True)
            print(markdown(result, common.machine_info()))
            return
        info = common.machine_info()
        result = run(args.test, args.train, args.threads, args.work_dir, speed_n=32, baseline=args.baseline)
        paths = common.write_results("fid_mnist", {"result": result, "machine": info}, markdown(result, info))
        print(markdown(result, info))
        print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    main()
