"""The objectives lab: small GPTs trained from scratch to test objective / architecture papers.

`model.py` (the GPT), `train.py` (the loop), `objectives.py`, `corpora.py`, `tokenizer.py`, and
`experiments/` (one file per paper, registered by name); `clm lab run NAME`. See docs/lab.md.
"""
