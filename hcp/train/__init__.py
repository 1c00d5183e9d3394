"""Training: LoRA (or QLoRA on CUDA) fine-tuning of a chat model on the rubric.

Takes a base model (HF folder, GGUF or hub id), validated examples and the config; gives an adapter folder
with the tokenizer, its chat template, `training_config.json`, metrics and a loss plot.
"""
