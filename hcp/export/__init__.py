"""Export: from a trained adapter to a model the Ollama daemon serves.

Takes an adapter folder (or a merged HF model); gives a merged safetensors model (merge), a GGUF (convert: hcp's
writer for the llama family, llama.cpp's own converter for other architectures (reference); tokens: checked to
give the training tokens; quantize; parity: checked to give the trained model's scores), a Modelfile carrying the
rubric (modelfile) and the model registered with the daemon (pipeline).
"""
