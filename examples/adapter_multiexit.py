"""A multi-exit CNN on the recognition task's digits (an exit after every block, the generic
classifier features). Run it, or: l2s compare my.yaml --import examples/adapter_multiexit.py"""

from torch import nn

from l2s_gym.adapters import MultiExit, register_adapter


def cnn(task, num_layers: int = 8, channels: int = 32) -> MultiExit:
    c, layers = channels, range(num_layers)
    blocks = [
        nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()) for _ in layers
    ]
    heads = [
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, task.num_classes))
        for _ in layers
    ]
    return MultiExit(blocks, heads, input_key="image", stem=nn.Conv2d(1, c, 3, padding=1))


register_adapter("cnn", cnn, task="recognition")  # predictor: {name: cnn, channels: 16}

if __name__ == "__main__":  # a few minutes: configs/recognition_small.yaml's settings, this CNN
    from pathlib import Path

    from l2s_gym import compare, config

    path = Path(__file__).parents[1] / "configs" / "recognition_small.yaml"
    sets = ["experiment=adapter_cnn", "predictor={name: cnn}", "compare.learners=[reverse_kl]"]
    print(compare.run_compare(config.load_config(path, sets), runs_root="runs", progress=False))
