"""Gradient descent on noisy least squares (examples/custom_predictor.py's task) as a stop
problem; nothing to train. Or: l2s compare my.yaml --import that file --import this one."""

import torch

from l2s_gym.adapters import Iterative, register_adapter


def gradient_descent(task, num_layers: int = 20) -> Iterative:
    A, eta = task.A, 1.0 / float(torch.linalg.matrix_norm(task.A.cpu(), ord=2)) ** 2  # step 1/L
    return Iterative(
        num_layers,
        init=lambda inputs: inputs["b"].new_zeros(inputs["b"].shape[0], A.shape[1]),
        step=lambda t, x, inputs: x - eta * (x @ A.T - inputs["b"]) @ A,
        readout=lambda t, x, inputs: x,
        kind="regressor",  # generic features: log10 of x's relative change, and t / T
    )


register_adapter("gd_adapter", gradient_descent, task="least_squares")

if __name__ == "__main__":  # about a minute
    from pathlib import Path

    from l2s_gym import compare, config, plugins

    plugins.import_module_or_file(str(Path(__file__).with_name("custom_predictor.py")))
    cfg = {"experiment": "adapter_gd", "beta": 0.01, "task": {"name": "least_squares"}, "predictor":
           {"name": "gd_adapter"}, "imitation": {"steps": 500}, "compare": {"learners": ["reverse_kl"]}}  # fmt: skip
    print(compare.run_compare(config.from_dict(cfg), runs_root="runs", progress=False))
