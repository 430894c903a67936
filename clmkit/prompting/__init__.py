"""Prompting and inference-time methods, one module per paper (docs/prompting.md):

    secot.py     SeCoT: semantics (data flow, control flow) before code; `CODE_STRATEGIES`
    sandbox.py   limited subprocess that runs generated code against a benchmark's tests
    jrt.py       JRT-Prompt: the input read twice; the generated key-value recall task
    pine.py      PINE: bidirectional attention between segments, positions by importance
    compress.py  LLMLingua-2-style compressor distilled from the target LM; LLMLingua-1 baseline
"""
