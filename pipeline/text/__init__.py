"""Text building blocks (docs/text.md): the offline English corpus from Python's own documentation,
BPE training and tokenisation with any tokenizer.json, and a small GPT-style causal LM (teacher and
student sizes) with its training, metrics and ONNX export."""
