"""The application around the library: the ``seqjax`` command and what it runs.

``cli`` (the command), ``train`` (the train loop: files, tokenizers, metrics, progress),
``translate`` (``Translator``, ``load``), ``evaluate`` (sacrebleu scores of a run),
``run_dir`` (the one module that knows a run directory's layout) and ``progress``.
The library (``seqjax.models``, ``decoding``, ``training``, ``checkpoint`` ...) does not
import from here, except lazily at two entry points that hand back a ``Translator``:
``seqjax.load`` and ``seqjax.interop.hf.load_hf_translator``.
"""
