"""A Hugging Face BERT classifier with early exit: HFEncoder(model), one layer per encoder
block, the model's own pooler and classifier as the exit after each (pip install 'l2s-gym[hf]').

    python examples/adapter_hf.py
"""

import torch
from transformers import BertConfig, BertForSequenceClassification

from l2s_gym import StopPolicy, StopRunner
from l2s_gym.adapters import HFEncoder

# A tiny random model; AutoModelForSequenceClassification.from_pretrained(...) works the same.
config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                    intermediate_size=64, num_labels=3)  # fmt: skip
model = BertForSequenceClassification(config).eval()
predictor = HFEncoder(model)  # T = 4 layers, generic classifier features

inputs = {"input_ids": torch.randint(1, 100, (8, 12)), "attention_mask": torch.ones(8, 12, dtype=torch.long)}  # fmt: skip
inputs["attention_mask"][4:, 6:] = 0  # padded rows: the mask follows them when rows stop
with torch.no_grad():  # the last exit is the model's own output
    assert torch.allclose(predictor.predict_full_depth(inputs), model(**inputs).logits, atol=1e-6)

# Train a policy with `l2s compare` on a task of yours (register_adapter("bert", lambda task:
# HFEncoder(...), task="my_text_task")); an untrained one stops where its bias says.
policy = StopPolicy(predictor.feature_shape, predictor.num_layers)
out = StopRunner(predictor, policy)(inputs)
print("layers:", out.layers.tolist(), "classes:", out.predictions.argmax(1).tolist())
