"""One module per recurrent dropout scheme (``dropout.recurrent.kind``).

Every module of this package is imported when a scheme is first looked up
(:func:`rnnlm.dropout.scheme.get_scheme`), and every :class:`~rnnlm.dropout.scheme.RecurrentScheme`
subclass with a ``name`` registers itself, so adding a scheme is adding a module here
(and its YAML in ``configs/dropout/recurrent/``):

* ``none``: no recurrent dropout, ``nn.LSTM``.
* ``weight_drop``: DropConnect on W_hh with the fused kernel (Merity et al. 2017).
* ``variational``: per-sequence masks on h_{t-1} (Gal & Ghahramani 2016).
* ``semeniuta``: dropout of the cell update (Semeniuta et al. 2016).
* ``zoneout``: units keep their previous value (Krueger et al. 2016).
"""
