"""Training data from video and screenshots, in the sample contract (``sample_format``) and written
as WebDataset shards (``shards``): video reading (``video``, decord), point tracking (``tracking``),
Trace-of-Mark (``tom``), Set-of-Mark marks and drawing (``som``) and grounding samples
(``som_samples``), corpus jobs over many processes and machines (``jobs``, ``corpus_kinds``), and a
small synthetic corpus for demos and tests (``synthetic``). No torch and no model imports here."""
