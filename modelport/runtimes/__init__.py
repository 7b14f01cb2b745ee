"""Model runtimes: one small interface (`base.Runtime`) over the inference libraries.

Built in: `llamacpp` (GGUF chat models), `transformers` (safetensors encoders and causal LMs),
`echo` (no model; benchmarks and fast tests). Others register in the `modelport.runtimes`
entry-point group or are named as `module:Class` (see `registry`). Runtimes run inside worker
processes only; nothing here is imported by the gateway except `base` and `registry`.
"""
