"""arcttt: test-time training for the ARC Prize, packaged for one offline Kaggle notebook.

Stages, one module each, in the order data flows:
data -> augment -> formats (tokenizer below it; templates, modeldir above it) -> ttt_data -> model -> ttt -> search
-> select -> budget -> solve -> worker -> runner -> submission, with score, report, profiling, weights and kaggle beside
them and cli on top.
Importing the package imports no heavy library (torch, transformers, unsloth, bitsandbytes).
"""

__version__ = "0.1.0"
