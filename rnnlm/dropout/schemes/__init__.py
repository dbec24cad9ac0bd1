"""One module per recurrent dropout scheme (``dropout.recurrent.kind``).

Every module of this package is imported when a scheme is first looked up
(:func:`rnnlm.dropout.scheme.get_scheme`), and every :class:`~rnnlm.dropout.scheme.RecurrentScheme`
subclass with a ``name`` registers itself, so adding a scheme is adding a module here
(and its YAML in ``configs/dropout/recurrent/``). Each module's docstring gives the paper
and the masks; docs/dropout.md tabulates them all.
"""
